"""The release rule on whole runs: what leaves the trainer is constants or charged DP outputs.

- The COVID reference, run as the container runs it but with the secure source's key known to
  the test (and only to it): the test replays the secret split, scores the decrypted model on
  the validation rows (exact accuracy, outside the release path), and checks the released noisy
  accuracy against it; privacy.json's epsilon is recomputed with other accountants.
- Two runs on tables that differ by one person: everything that leaves (stdout, the signed
  outcome, metrics.json, privacy.json, the output's members) is identical once the DP values
  (every number) are masked, and no number that leaves equals n or a value derived from it."""
from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import onnxruntime
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import PRVAccountant, RDPAccountant

from local_emulator import covid_reference as covid_model
from shared import package, storage_names
from shared.pipeline import JoinSpec
from tests.trainer.harness import KeyReleaseStandIn, Stage, environment, outcome, run_trainer_process
from tests.trainer.test_run import raw_tables, run_in_process
from trainer_container import run as trainer_run
from trainer_container.accountant import RDP_ACCOUNTANT
from trainer_container.join import join_datasets
from trainer_container.secure_random import SecureRandom

KEY = b"release-rule-test-key-32-bytes!!"


def read_output(stage: Stage, signed, folder) -> dict[str, bytes]:
    blob = stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id))
    (folder / "out.ccr").write_bytes(blob.download_blob().readall())
    package.decrypt_file(folder / "out.ccr", folder / "out.zip", stage.output_key(signed))
    with zipfile.ZipFile(folder / "out.zip") as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture
def covid_run(tmp_path, azurite, did_host, topic, monkeypatch):
    """The COVID reference in this process, the secure source keyed with KEY."""
    monkeypatch.setattr(trainer_run, "SecureRandom", lambda: SecureRandom(KEY))
    stage = Stage(tmp_path, azurite, "covid-release-rule", dids=did_host)
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(),
                                       covid_model.covid_join_spec()))
    code, lines, _ = run_in_process(monkeypatch, stage, topic, signed)
    assert code == 0, lines
    return stage, lines, outcome(topic.events[0]), read_output(stage, signed, tmp_path)


def test_covid_exact_accuracy_and_the_released_noisy_one(covid_run):
    stage, lines, signed_outcome, contents = covid_run
    spec = JoinSpec.from_dict(covid_model.covid_join_spec())
    table = join_datasets(spec, {name: stage.tmp / f"{name}.in" for name in covid_model.RAW_FILES})
    replay = SecureRandom(KEY)
    replay.normal(1, 1.0)  # the noisy count's draw
    validating = table[replay.bernoulli(len(table), 0.2)]  # the split, as the trainer drew it
    session = onnxruntime.InferenceSession(contents["model.onnx"], providers=["CPUExecutionProvider"])
    logits = session.run(None, {"features": validating.loc[:, list(spec.feature_columns)].to_numpy(np.float32)})[0]
    exact = float(((logits[:, 0] > 0) == (validating[spec.target].to_numpy() == 1)).mean())
    released = json.loads(contents["metrics.json"])["validation"]["accuracy"]
    privacy = json.loads(contents["privacy.json"])
    print(f"COVID: exact validation accuracy {exact:.4f}, released {released:.4f}, epsilon {privacy['epsilon']:.4f} "
          f"(RDP {privacy['epsilon_rdp']:.4f}); " +
          ", ".join(f"{m['mechanism']} {m['noise_multiplier']:.3f}: {m['epsilon_alone']:.3f}"
                    for m in privacy["mechanisms"]))
    assert exact >= 0.85
    assert abs(released - exact) <= 0.03
    assert privacy["epsilon"] <= 1.5 and signed_outcome["privacy"]["epsilon"] == privacy["epsilon"]


def test_privacy_json_epsilon_recomputed_with_other_accountants(covid_run):
    """PRV (Opacus: another library and method) agrees with the PLD total within its error
    bound; Opacus's RDP gives privacy.json's RDP figure, Google's RDP agrees; PLD is tighter."""
    *_, contents = covid_run
    privacy = json.loads(contents["privacy.json"])
    history = [(m["noise_multiplier"], m["sample_rate"], m["steps"]) for m in privacy["mechanisms"]]
    assert [m["mechanism"] for m in privacy["mechanisms"]] == [
        "joined_row_count", "scaling_statistics", "dp_sgd", "confusion_counts"]
    prv = PRVAccountant()
    prv.history = list(history)
    assert abs(prv.get_epsilon(delta=privacy["delta"]) - privacy["epsilon"]) <= 0.03
    rdp = RDPAccountant()
    rdp.history = list(history)
    rdp_alphas = RDPAccountant.DEFAULT_ALPHAS + list(range(64, 256, 8)) + [256, 384, 512, 768, 1024, 2048, 4096]
    assert "4096" in RDP_ACCOUNTANT
    assert rdp.get_epsilon(delta=privacy["delta"], alphas=rdp_alphas) == pytest.approx(privacy["epsilon_rdp"])
    google = rdp_privacy_accountant.RdpAccountant()
    for sigma, rate, steps in history:
        event = dp_event.GaussianDpEvent(sigma) if rate == 1.0 else dp_event.PoissonSampledDpEvent(
            rate, dp_event.GaussianDpEvent(sigma))
        google.compose(event, steps)
    assert google.get_epsilon(privacy["delta"]) == pytest.approx(privacy["epsilon_rdp"], abs=0.02)
    assert privacy["epsilon"] < privacy["epsilon_rdp"]
    assert privacy["target_epsilon"] - 0.01 <= privacy["epsilon"] <= privacy["target_epsilon"]


NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def masked(text: str) -> str:
    return NUMBER.sub("#", text)


def numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_neighbouring_tables_leave_the_same_bytes_but_dp_values(tmp_path, azurite, did_host, topic):
    """One icmr row less (one person fewer in the join): the runs, as the container runs them,
    differ only in numbers; no number that leaves is n, n - 1 or 1 / n."""
    leaving, joined = [], []
    for folder, drop in (("all", None), ("one-less", 0)):
        tables = raw_tables()
        if drop is not None:
            tables["icmr"] = tables["icmr"].drop(index=drop)
        (tmp_path / folder).mkdir()
        stage = Stage(tmp_path / folder, azurite, f"covid-neighbour-{folder}", dids=did_host)
        signed = stage.sign(stage.contract(tables, covid_model.covid_training_config(epochs=1),
                                           covid_model.covid_join_spec()))
        topic.events.clear()
        topic.progress.clear()
        sidecar = KeyReleaseStandIn(stage.keks, stage.kek_vaults).start()
        try:
            done = run_trainer_process(environment(stage, sidecar, topic, signed))
        finally:
            sidecar.stop()
        assert done.returncode == 0, done.stdout + done.stderr
        contents = read_output(stage, signed, tmp_path / folder)
        spec = JoinSpec.from_dict(covid_model.covid_join_spec())
        joined.append(len(join_datasets(spec, {n: stage.tmp / f"{n}.in" for n in covid_model.RAW_FILES})))
        signed_outcome = {k: v for k, v in outcome(topic.events[0]).items()
                          if k not in ("run_id", "nonce", "output_blob", "output_blake3")}
        signed_progress = [{k: v for k, v in outcome({"data": {"outcome": e["data"]["progress"]}}).items()
                            if k not in ("run_id", "nonce")} for e in topic.progress]
        leaving.append({"stdout": done.stdout.replace(stage.run_id, "<run>"), "stderr": done.stderr,
                        "outcome": signed_outcome, "progress": signed_progress, "members": sorted(contents),
                        "metrics": json.loads(contents["metrics.json"]),
                        "privacy": json.loads(contents["privacy.json"])})
    assert joined == [2119, 2118]
    first, second = leaving
    for part in ("stdout", "stderr"):
        assert masked(first[part]) == masked(second[part])
    assert [p["epoch"] for p in first["progress"]] == [1]  # one epoch: one attested progress event
    for part in ("outcome", "progress", "metrics", "privacy", "members"):
        assert masked(json.dumps(first[part], sort_keys=True)) == masked(json.dumps(second[part], sort_keys=True))
    for run, n in zip(leaving, joined):
        values = numbers([run["outcome"], run["progress"], run["metrics"], run["privacy"]]) + \
            [float(m.group()) for m in NUMBER.finditer(run["stdout"] + run["stderr"])]
        # joined_rows_noisy is the noisy count (a DP value); everything else must not be n-derived
        for exact in (n, n - 1, n + 1, 1 / n, 0.8 * n, 0.2 * n, 1 / (0.8 * n)):
            assert not any(v == pytest.approx(exact, rel=1e-9) for v in values
                           if v != run["privacy"]["joined_rows_noisy"]), exact
