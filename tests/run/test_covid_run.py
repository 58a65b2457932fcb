"""The COVID reference end to end through every part, with a host crash in the middle:
the parties publish with `ccr`, sign, the ledger calls the webhook, the run starts by itself,
the host is killed -9 while the trainer trains and started again, and the run still finishes
exactly once: one container group ever created, none left, the TDC told once."""
from __future__ import annotations

import onnxruntime
import numpy as np

from local_emulator.stack import wait_for
from shared import events
from tests.run.conftest import groups_created, remaining_groups, run_record


def test_covid_run_survives_a_host_crash_and_delivers_the_model(stack, scenario_factory):
    scenario = scenario_factory()
    stack.subscribe(f"tdc-{scenario.contract_id}", scenario.inbox.events_url, [events.RUN_FINISHED])
    scenario.publish_inputs()
    scenario.create_identities()
    scenario.sign_and_submit(scenario.write_contract())
    run_id = scenario.run_id

    wait_for(lambda: (run_record(stack, run_id) or {}).get("phase") == "training", 120, what="training to start")
    stack.host.kill()
    stack.restart_host()

    notice = scenario.wait_for_notice(300)
    assert notice["run_id"] == run_id and notice["status"] == "succeeded", notice
    assert set(notice) >= {"run_id", "contract_id", "status", "output_blob"}
    assert "sig=" not in (notice["output_blob"] or "")  # a location, never a SAS

    output = scenario.fetch_output(run_id)
    assert output["members"] == ["metrics.json", "model.onnx", "privacy.json"]
    validation, privacy = output["metrics"]["validation"], output["privacy"]
    assert "train_rows" not in privacy and "validation_rows" not in privacy  # row counts are private
    assert [m["mechanism"] for m in privacy["mechanisms"]] == [
        "joined_row_count", "scaling_statistics", "dp_sgd", "confusion_counts"]  # all in the one epsilon
    assert privacy["epsilon"] <= 1.5 and privacy["epochs"] == 5
    assert validation["accuracy"] >= 0.85  # the released, noisy accuracy (tests/trainer checks it against the exact)
    session = onnxruntime.InferenceSession(str(scenario.workdir / "trained.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 10), np.float32)})[0]
    assert logits.shape == (3, 1)

    record = run_record(stack, run_id)
    assert record["status"] == "succeeded" and record["phase"] == "finished"
    for phase in ("validating", "gathering_key_grants", "reserving_budget", "deploying", "training", "cleaning_up",
                  "notifying"):
        assert {"started", "ended"} <= set(record["phases"][phase]), phase
    assert record["privacy_budget_spent"] == {name: privacy["epsilon"] for name in ("icmr", "cowin", "index")}
    assert record["trainer_log_tail"], "the trainer's log tail is kept in the run record"

    assert groups_created(stack, run_id) == 1
    assert remaining_groups(stack) == []
    assert len(scenario.inbox.notices) == 1
    finished = wait_for(lambda: [e for e in scenario.inbox.events if e["subject"] == f"runs/{run_id}"], 30,
                        what="the CCR.Run.Finished event")
    assert finished[0]["eventType"] == events.RUN_FINISHED and finished[0]["data"]["status"] == "succeeded"
    assert finished[0]["data"]["output_blob"] == notice["output_blob"]
