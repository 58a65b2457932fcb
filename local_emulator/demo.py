"""`python -m local_emulator demo [covid|loan]`: a scenario end to end on the local emulators,
then a report of what the TDC got: the DP validation metrics, the privacy spent (in total and
by mechanism) and each phase's time. The loan scenario also reports the rows as released (a
noisy count) and the released model's AUC on a fresh synthetic sample beside a non-private
baseline's.

The trainer runs from the real OCI trainer image (tools/trainer_image.py), pulled, verified
and run chrooted by the ACI twin as confidential ACI runs it; the image is built first if the
machine's cache lacks it (about 6 minutes once). `--image tarball` is the quick demo: the
trainer's source tarball run with this venv's Python, as the tests run it.
Starts everything it needs and leaves nothing running."""
from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from local_emulator.covid_scenario import CovidScenario, trainer_image_kind
from local_emulator.loan_scenario import DEFAULT_BATCH_ROWS, DEFAULT_ROWS, DEFAULT_SAMPLE_ROWS, LoanScenario
from local_emulator.stack import Stack
from shared.settings import emulator_dir

DEMO_IMAGE_KIND = "oci"
FIRST_BUILD_MINUTES = 6          # measured on a loaded 2-core machine: debootstrap 197 s, pip with torch 183 s
HEARTBEAT_SECONDS = 30

PHASES = ("validating", "gathering_key_grants", "reserving_budget", "deploying", "training", "cleaning_up", "notifying")


def phase_seconds(record: dict) -> dict[str, float]:
    """Duration of each phase of a run record, in seconds."""
    durations = {}
    for phase in PHASES:
        times = record.get("phases", {}).get(phase)
        if times and "started" in times and "ended" in times:
            durations[phase] = (datetime.fromisoformat(times["ended"])
                                - datetime.fromisoformat(times["started"])).total_seconds()
    return durations


def report(result: dict, elapsed: float, echo=print) -> None:
    notice, record = result["notice"], result["run"]
    echo("")
    echo(f"run {notice['run_id']}: {notice['status']}" + (f" ({notice.get('reason')})" if notice.get("reason") else ""))
    for phase, seconds in phase_seconds(record).items():
        echo(f"  {phase:<14} {seconds:7.2f} s")
    output = result.get("output")
    if output:
        metrics, privacy = output["metrics"]["validation"], output["privacy"]
        shown = [k for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "loss") if metrics.get(k) is not None]
        echo("validation (differentially private): " + ", ".join(f"{k} {metrics[k]:.3f}" for k in shown))
        if "confusion_matrix" in metrics:
            echo(f"noisy confusion counts [true][predicted]: {metrics['confusion_matrix']}")
        echo(f"privacy: epsilon {privacy['epsilon']:.3f} (target {privacy['target_epsilon']}), delta "
             f"{privacy['delta']:.3g}, {privacy['accountant']}; RDP would say {privacy['epsilon_rdp']:.3f}")
        for mechanism in privacy["mechanisms"]:
            sampled = f", {mechanism['steps']} steps at rate {mechanism['sample_rate']:.4f}" \
                if mechanism["steps"] > 1 else ""
            echo(f"  {mechanism['mechanism']:<20} noise multiplier {mechanism['noise_multiplier']:7.3f}{sampled}: "
                 f"epsilon {mechanism['epsilon_alone']:.3f} alone")
        echo(f"budget spent per dataset: {record.get('privacy_budget_spent')}")
        echo(f"decrypted output: {', '.join(output['members'])} ({output['size']} bytes)")
    echo(f"total {elapsed:.1f} s")


def _say(line: str) -> None:
    print(line, flush=True)          # progress shows at once also through a pipe (make demo | tee)


@contextlib.contextmanager
def _heartbeat(what: str, echo=_say, every: float = HEARTBEAT_SECONDS):
    """A line every `every` seconds while a long step runs, so a quiet build does not look hung."""
    stopped, started = threading.Event(), time.monotonic()

    def beat():
        while not stopped.wait(every):
            elapsed = int(time.monotonic() - started)
            echo(f"  ... {what}: {elapsed // 60} min {elapsed % 60:02d} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def ensure_trainer_image(echo=_say) -> None:
    """Build the real trainer image unless the machine's cache has it (then this takes a second)."""
    from tools.trainer_image import build_trainer_image, first_build_pending
    from tools.oci_image import default_cache_dir
    if first_build_pending():
        echo(f"building the real trainer image (Debian + Python 3.11 + torch, without a container engine): "
             f"the first build takes about {FIRST_BUILD_MINUTES} minutes, then it is cached in {default_cache_dir()}; "
             f"`--image tarball` skips it")
    started = time.monotonic()
    with _heartbeat("building the trainer image", echo):
        built = build_trainer_image(progress=lambda line: echo(f"  {line}"))
    echo(f"trainer image {built.digest} ready in {time.monotonic() - started:.1f} s")


def _image_ready() -> bool:
    """The real trainer image built or found in the cache; False (and why, on stderr) if it cannot be."""
    from tools.oci_image import ImageBuildError
    try:
        ensure_trainer_image()
    except ImageBuildError as error:
        print(f"the trainer image could not be built: {error}\n`--image tarball` runs the quick demo without it",
              file=sys.stderr)
        return False
    return True


def _run_scenario(folder: str, state_dir: Path | None, image_kind: str, make_scenario, report_run) -> int:
    """A fresh stack in `state_dir`, the scenario `make_scenario(stack, parties_dir)` run once on
    it, then `report_run(scenario, result, elapsed)`; the exit code (0: its runs succeeded)."""
    state_dir = Path(state_dir or emulator_dir() / folder)
    shutil.rmtree(state_dir, ignore_errors=True)  # a demo starts from nothing
    started = time.monotonic()
    if image_kind == "oci" and not _image_ready():
        return 2
    stack_started = time.monotonic()
    with Stack(state_dir) as stack:
        _say(f"local emulators up in {time.monotonic() - stack_started:.1f} s (state in {state_dir})")
        scenario = make_scenario(stack, state_dir / "parties")
        try:
            result = scenario.run(timeout=scenario.deadline_seconds + 60)
        finally:
            scenario.close()
    report_run(scenario, result, time.monotonic() - started)
    return 0 if scenario.succeeded(result) else 1


def run_demo(state_dir: Path | None = None, image_kind: str = DEMO_IMAGE_KIND) -> int:
    return _run_scenario("demo", state_dir, image_kind,
                         lambda stack, parties: CovidScenario(stack, parties, image_kind=image_kind, echo=_say),
                         lambda scenario, result, elapsed: report(result, elapsed))


def loan_report(scenario: LoanScenario, result: dict, elapsed: float, echo=print) -> None:
    """The generic report, then the parties' own phases, the released row count and the AUCs,
    then the continued run's."""
    report(result, elapsed, echo)
    echo(f"synthetic data: {scenario.rows:,} bank customers, then {scenario.batch_rows:,} new ones (seed "
         f"{scenario.seed}); the parties' phases:")
    for phase, seconds in scenario.timings.items():
        echo(f"  {phase:<30} {seconds:7.2f} s")
    _loan_model_report("first run", result, echo)
    continued = result.get("continued")
    if continued:
        record = continued["run"]
        echo(f"continued run {record['run_id']}: {continued['notice']['status']}"
             + (f" ({continued['notice'].get('reason')})" if continued["notice"].get("reason") else ""))
        if record.get("previous_model_sha256"):
            echo(f"  started from the first run's model state {record['previous_model_sha256'][:16]}..., "
                 f"kept in the clean room (never re-uploaded by the TDC)")
        echo(f"  budget spent per dataset: {record.get('privacy_budget_spent')} (the new customers' own "
             "population; the bureau's adds to its first run)")
        _loan_model_report("continued run", continued, echo)
    inference = result.get("inference")
    if inference:
        _inference_report(scenario, inference, echo)


def _loan_model_report(which: str, result: dict, echo) -> None:
    output = result.get("output")
    if not output:
        return
    echo(f"{which}: joined rows as released {output['privacy']['joined_rows_noisy']:,.0f} (a noisy count; the exact "
         "count never leaves the clean room)")
    evaluation = result["evaluation"]
    echo(f"{which}: ROC AUC on a fresh synthetic sample of {evaluation['fresh_rows']:,} joined rows: released DP "
         f"model {evaluation['model_auc']:.3f}, non-private logistic regression {evaluation['baseline_auc']:.3f}")


def _inference_report(scenario: LoanScenario, inference: dict, echo) -> None:
    record = inference["run"]
    echo(f"inference run {record['run_id']} (the bank's sample of applicants): {record['status']}"
         + (f" ({record.get('reason')})" if record.get("reason") else ""))
    summary = inference.get("summary")
    if not summary:
        return
    seconds = scenario.timings.get("inference: run (until recorded)", 0.0)
    echo(f"  {summary['rows']:,} predictions, one per row sent and in its order: {summary['rows_match']} "
         f"({seconds:.1f} s from upload to record, mostly the confidential group's start; the data plane's "
         "own rate: bench/inference_throughput.py)")
    echo(f"  mean default probability {summary['mean_probability']:.3f}, labelled default "
         f"{summary['labelled_default']:.1%}; ROC AUC against the outcomes the bank later learns "
         f"{summary['auc_on_later_outcomes']:.3f}")
    echo("  only the bank holds the key its predictions are encrypted under; the run is recorded for every party")


def run_loan_demo(rows: int | None = None, state_dir: Path | None = None, image_kind: str = DEMO_IMAGE_KIND,
                  batch_rows: int | None = None, sample_rows: int | None = None) -> int:
    """The loan scenario: a first run on `rows` bank customers, a run continued on a batch of
    `batch_rows` new ones, then the bank's inference on `sample_rows` applicants. The exit code
    is 0 only if all succeeded."""
    return _run_scenario("demo-loan", state_dir, image_kind,
                         lambda stack, parties: LoanScenario(stack, parties, rows=rows or DEFAULT_ROWS,
                                                             batch_rows=batch_rows or DEFAULT_BATCH_ROWS,
                                                             sample_rows=sample_rows or DEFAULT_SAMPLE_ROWS,
                                                             image_kind=image_kind, echo=_say),
                         loan_report)

if __name__ == "__main__":
    sys.exit(run_demo(image_kind=trainer_image_kind(DEMO_IMAGE_KIND)))
