"""The loan-default scenario, played with `ccr` against a running `Stack` exactly as the COVID
one is (same steps, same parties' settings; CovidScenario's hooks swapped): a bank (loan
records) and a credit bureau (bureau history) generate their raw exports
(local_emulator/loan_data.py), de-identify them with configs/loan/*.json (the mobile number
becomes the `customer` pseudonym both join on), encrypt, upload and declare their budgets; the
TDC publishes the model and training config of local_emulator/loan_reference.py; all three
sign; the run trains once; the TDC fetches the model.

With `sample_rows`, the contract names the bank as an inference requester: once training is
done, the bank scores a sample CSV of applicants (complete feature rows) with the model kept in
the clean room, and only the bank decrypts the predictions.

With `batch_rows`, the contract allows continued training and the bank later publishes a new
batch: loans of `batch_rows` new customers (the bureau already has files on them), declared as
a version 2 of new individuals. Its arrival starts a continued run from the first run's model,
kept in the clean room; its budget is the new people's own, and the bureau's composes.

The TDC then judges each released model the only way it can without anyone's rows: on a fresh
synthetic sample (another seed), beside a non-private logistic regression fitted on the same
synthetic draw the providers published, both batches (local_emulator/loan_baseline.py).

Used by `python -m local_emulator demo loan` and tests/run/test_loan_run.py."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd

from local_emulator import loan_data, loan_reference
from local_emulator.covid_scenario import CommandFailed, CovidScenario
from local_emulator.loan_baseline import fit_logistic, roc_auc
from local_emulator.stack import Stack
from shared import continuation

DEFAULT_ROWS = 5_000        # bank customers: about 4,250 joined rows, a run well under a minute
DEFAULT_BATCH_ROWS = 2_000  # new bank customers of the demo's continued batch: about 1,700 joined rows
DEFAULT_SAMPLE_ROWS = 2_000  # applicants drawn for the demo's inference sample (about 1,700 complete rows)
SEED_SCALE_ROWS = 4_700_000         # the seed's benchmark: about 4 M joined rows trained first,
SEED_SCALE_BATCH_ROWS = 1_180_000   # then about 1 M continued on (85% of customers join the bureau)
EVALUATION_ROWS = 20_000    # bank customers of the fresh sample: about 17,000 joined rows
EPSILON = 3.0


def deadline_for(rows: int) -> int:
    """The contract's trainer deadline: 300 s, plus a second per 200 bank customers. Measured:
    200,000 customers trained in 411 s on 2 cores at a load average of 20 (3,183 DP-SGD
    steps); the deadline must hold on such a machine."""
    return 300 + rows // 200


class LoanScenario(CovidScenario):
    providers = ("bank", "bureau")
    purpose = "Loan default model (a bank's loan records joined with a credit bureau's history)"

    def __init__(self, stack: Stack, workdir: Path, rows: int = DEFAULT_ROWS, seed: int = 0,
                 contract_id: str = "loan-demo", epsilon: float = EPSILON, batch_rows: int = 0,
                 sample_rows: int = 0, **options):
        options.setdefault("deadline_seconds", deadline_for(rows))
        if batch_rows:  # a second run, continued: the contract allows it and the bureau's budget has room
            options.setdefault("continued_training", True)
            options.setdefault("lifetime_runs", 2)
        if sample_rows:  # the bank may score its applicants with the model kept inside
            options.setdefault("inference_requesters", ("bank",))
        super().__init__(stack, workdir, contract_id=contract_id, epsilon=epsilon, **options)
        self.rows, self.seed, self.batch_rows, self.sample_rows = rows, seed, batch_rows, sample_rows
        self.generated: dict | None = None

    # --- the scenario's inputs (CovidScenario's hooks) -------------------------------------

    def raw_table(self, name: str) -> Path:
        """Provider `name`'s raw export, both generated on first use (each provider would have
        only its own; one call writes both because they describe the same people). The bank's
        later batch (`bank.v2`: its last `batch_rows` customers) is split off its export."""
        if self.generated is None:
            everyone = self._raw_path("bank.all")
            self.generated = loan_data.write_tables(everyone, self._raw_path("bureau"),
                                                    self.rows + self.batch_rows, self.seed)
            _split_lines(everyone, self.rows, self._raw_path("bank"), self._raw_path("bank.v2"))
        return self._raw_path(name)

    def _raw_path(self, name: str) -> Path:
        return self.workdir / f"{name}.raw.csv"

    def prepare_config(self, name: str) -> Path:
        return loan_data.CONFIGS / f"{name}.json"

    def model_onnx(self) -> bytes:
        return loan_reference.loan_onnx()

    def training_config(self) -> dict:
        return loan_reference.loan_training_config(epsilon=self.epsilon, **self.training_overrides)

    def join_spec(self) -> dict:
        return loan_reference.loan_join_spec()

    # --- the run, timed phase by phase -----------------------------------------------------

    @contextmanager
    def timed(self, phase: str):
        began = time.monotonic()
        try:
            yield
        finally:
            self.timings[phase] = time.monotonic() - began

    def run(self, timeout: float = 300) -> dict:
        """The whole scenario, each client-side phase timed in `timings`; returns the notice,
        the run record, the output and, if the run succeeded, the evaluation."""
        with self.timed("generate raw tables"):
            self.raw_table("bank")
        with self.timed("trainer image"):
            self.build_trainer_image()
        with self.timed("prepare and publish"):
            self.prepare_and_publish_datasets()
        with self.timed("publish model"):
            self.publish_model()
        with self.timed("contract, sign, submit"):
            self.sign_and_submit(self.write_contract())
        for party in self.inference_requesters:
            with self.timed(f"inference: {party} grants keys"):
                self.grant_inference_keys(party)
        with self.timed("run (until notified)"):
            notice = self.wait_for_notice(timeout)
        result = {"notice": notice, "run": self.run_record(notice["run_id"])}
        if notice["status"] == "succeeded":
            with self.timed("fetch and decrypt"):
                result["output"] = self.fetch_output(notice["run_id"])
            with self.timed("evaluate"):
                result["evaluation"] = self.evaluate(self.workdir / "trained.onnx")
            if self.batch_rows:
                result["continued"] = self.continue_on_new_batch(timeout)
            if self.sample_rows:
                result["inference"] = self.score_sample(timeout)
        return result

    def succeeded(self, result: dict) -> bool:
        """The first run succeeded, and so did the continued run and the inference the scenario has."""
        return super().succeeded(result) and (not self.batch_rows or super().succeeded(result["continued"])) and \
            (not self.sample_rows or result["inference"]["run"]["status"] == "succeeded")

    def score_sample(self, timeout: float) -> dict:
        """The bank scores a sample of applicants (complete feature rows of a fresh synthetic draw,
        row ids its own) with the model kept in the clean room, then fetches and decrypts the
        predictions; a summary of them beside the outcomes the bank later learns."""
        sample, outcomes = applicants(self.sample_rows, self.seed + 2, "applicant")
        sample.to_csv(self.workdir / "sample.csv", index=False)
        contract = str(self.workdir / "contract.json")
        with self.timed("inference: submit sample"):
            submitted = self.ccr("infer", "submit", "--contract", contract, "--input", str(self.workdir / "sample.csv"),
                                 "--batch", "sample", "--keys-dir", str(self.keys_dir("bank")), party="bank")
        with self.timed("inference: run (until recorded)"):
            try:
                self.ccr("runs", "watch", submitted["run_id"], "--timeout", str(timeout), party="bank")
            except CommandFailed:
                pass                     # the record says why
        record = self.ccr("runs", "show", submitted["run_id"], party="bank")
        result = {"run": record}
        if record["status"] == "succeeded":
            with self.timed("inference: fetch predictions"):
                self.ccr("infer", "fetch", "--contract", contract, "--run-id", submitted["run_id"],
                         "--out", str(self.workdir / "predictions.csv"), "--keys-dir", str(self.keys_dir("bank")),
                         party="bank")
            predictions = pd.read_csv(self.workdir / "predictions.csv", dtype={"row_id": str})
            result["summary"] = {
                "rows": len(predictions), "rows_match": predictions["row_id"].tolist() == sample["row_id"].tolist(),
                "mean_probability": float(predictions["probability"].mean()),
                "labelled_default": float(predictions["label"].mean()),
                "auc_on_later_outcomes": roc_auc(predictions["probability"].to_numpy(), outcomes)}
        return result

    def continue_on_new_batch(self, timeout: float) -> dict:
        """The bank prepares, publishes and declares its new customers' batch as version 2 (new
        individuals); the continued run it starts is followed to its notice, its model fetched
        and judged like the first."""
        with self.timed("continue: publish new batch"):
            prepared = self.prepare("bank", self.raw_table("bank.v2"), self.workdir / "bank.v2.prepared.csv")
            self.publish_version("bank", prepared, 2, new_individuals=True)
        run_id = continuation.run_id(self.contract_id, self.digest, self.identities["bank"]["did"], "bank", 2)
        with self.timed("continue: run (until notified)"):
            notice = self.notice_of(run_id, timeout)
        result = {"notice": notice, "run": self.run_record(run_id)}
        if notice["status"] == "succeeded":
            with self.timed("continue: fetch and evaluate"):
                result["output"] = self.fetch_output(run_id, "continued.onnx")
                result["evaluation"] = self.evaluate(self.workdir / "continued.onnx")
        return result

    def evaluate(self, model: Path, rows: int = EVALUATION_ROWS) -> dict:
        """ROC AUC of the released model and of the non-private baseline (fitted on everyone the
        providers published) on a fresh synthetic sample (seed + 1): the TDC's own test set, no
        provider's rows."""
        features, target = loan_reference.FEATURE_COLUMNS, loan_reference.TARGET
        x, y = loan_data.joined_sample(rows, self.seed + 1, features, target)
        session = onnxruntime.InferenceSession(str(model))
        logits = session.run(None, {session.get_inputs()[0].name: x})[0].ravel()
        baseline = fit_logistic(*loan_data.joined_sample(self.rows + self.batch_rows, self.seed, features, target))
        return {"fresh_rows": len(y), "model_auc": roc_auc(logits, y),
                "baseline_auc": roc_auc(baseline.logits(x), y), "model_logits_finite": bool(np.isfinite(logits).all())}


def _split_lines(source: Path, rows: int, first: Path, rest: Path) -> None:
    """`source`'s header and first `rows` lines to `first`, its header and the others to `rest`
    (a raw export has one record per line), then `source` removed."""
    with open(source, encoding="utf-8") as lines, open(first, "w", encoding="utf-8") as head, \
            open(rest, "w", encoding="utf-8") as tail:
        header = next(lines)
        head.write(header)
        tail.write(header)
        for number, line in enumerate(lines):
            (head if number < rows else tail).write(line)
    source.unlink()


def applicants(rows: int, seed: int, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """An inference batch of complete feature rows (a synthetic draw of `rows` customers' joined
    rows), row ids `<name>-<i>` first; and the outcomes those people later have."""
    features, outcomes = loan_data.joined_sample(rows, seed, loan_reference.FEATURE_COLUMNS, loan_reference.TARGET)
    batch = pd.DataFrame(features, columns=list(loan_reference.FEATURE_COLUMNS))
    batch.insert(0, "row_id", [f"{name}-{i}" for i in range(len(batch))])
    return batch, outcomes
