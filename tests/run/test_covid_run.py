"""The COVID reference end to end through every part, with a host crash in the middle:
the parties publish with `ccr`, sign, the ledger calls the webhook, the run starts by itself,
the host is killed -9 while the trainer trains and started again, and the run still finishes
exactly once: one container group ever created, none left, the TDC told once.

The same run is watched in a real browser on the live run page (the TDC signs in with `ccr
page`): the training phase is rendered, the page rides out the host crash and shows the run
finished without a reload, and another party's run is absent; a screenshot is kept in
test-artifacts/. The TDC's own event subscription (`ccr events subscribe`) receives its
party-scoped CCR.Run.Finished."""
from __future__ import annotations

import base64
import json
import re
import secrets

import onnxruntime
import numpy as np
from azure.storage.blob import BlobServiceClient

from local_emulator import tls as loopback_tls
from local_emulator.stack import wait_for
from local_emulator.tls import LoopbackServer
from shared import contract as contracts
from shared import did as dids
from shared import events, party_events
from shared.contract_store import ContractStore
from shared.run_records import RunRecords
from tests.contracts.conftest import contract_payload
from tests.run.browser import chromium, screenshot
from tests.run.conftest import groups_created, remaining_groups, run_record


def another_partys_run(stack) -> dict:
    """A contract of other parties with a run, stored as the control plane stores them."""
    service = BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])
    tdc, tdp = (dids.Identity.generate(dids.did_web("127.0.0.1", 9, name)) for name in ("rival-tdc", "rival-tdp"))
    payload = contract_payload(tdc.did, {"rival": tdp}, contract_id=f"rival-{secrets.token_hex(3)}")
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    envelope = contracts.sign_contract(payload, [tdc, tdp])
    ContractStore(service).accept(payload, digest, base64.b64encode(envelope).decode(), None)
    run_id = f"run-{secrets.token_hex(8)}"
    RunRecords(service).create(run_id, payload["contract_id"], digest)
    return {"run_id": run_id, "contract_id": payload["contract_id"]}


class PartyHook:
    """The TDC's own https webhook: answers Event Grid's handshake, keeps the events."""

    def __init__(self, stack):
        self.events = []
        tls = loopback_tls.load_or_create(stack.state_dir)
        self.server = LoopbackServer(self._route, tls.server_context(), name="tdc-hook").start()

    def _route(self, method, path, query, headers, body):
        received = json.loads(body or b"[]")
        if headers.get("aeg-event-type") == "SubscriptionValidation":
            return 200, {"validationResponse": received[0]["data"]["validationCode"]}, {}
        self.events.extend(received)
        return 200, None, {}


def run_summary(stack, run_id: str) -> dict:
    record = run_record(stack, run_id) or {}
    return {k: record.get(k) for k in ("status", "phase", "reason", "phases", "progress")}


def host_log_tail(stack, lines: int = 40) -> str:
    return "\n".join((stack.state_dir / "host.log").read_text(errors="replace").splitlines()[-lines:])


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def test_covid_run_survives_a_host_crash_and_delivers_the_model(stack, scenario_factory):
    scenario = scenario_factory()
    stack.subscribe(f"tdc-{scenario.contract_id}", scenario.inbox.events_url, [events.RUN_FINISHED])
    rival = another_partys_run(stack)
    hook = PartyHook(stack)
    driver = chromium()   # started before the run: only the page load falls inside the training window
    try:
        scenario.publish_inputs()
        scenario.create_identities()
        subscribed = scenario.ccr("events", "subscribe", "--webhook", f"{hook.server.url}/events", party="tdc")
        assert subscribed["provisioning_state"] == "Succeeded", subscribed
        scenario.sign_and_submit(scenario.write_contract())
        run_id = scenario.run_id

        wait_for(lambda: (run_record(stack, run_id) or {}).get("phase") == "training", 120, what="training to start")
        driver.get(scenario.ccr("page", "--no-browser", party="tdc")["url"])
        wait_for(lambda: run_id in page_text(driver), 30, what="the run on the page")
        live = page_text(driver)
        assert "status: running, phase: training" in live and scenario.contract_id in live, live
        driver.execute_script("window.notReloaded = true")
        stack.host.kill()
        stack.restart_host()

        try:
            wait_for(lambda: "status: succeeded, phase: finished" in page_text(driver), 300,
                     what="the page to show the run finished")
        except TimeoutError as late:   # say whether the run or the page is behind
            raise AssertionError(f"{late}\nrun record: {run_summary(stack, run_id)}\npage: {page_text(driver)}\n"
                                 f"host log tail:\n{host_log_tail(stack)}") from None
        done = page_text(driver)
        assert driver.execute_script("return window.notReloaded === true")   # the page updated itself
        assert "cleaning_up" in done and "privacy budget spent" in done
        # the trainer's attested progress (epochs are too short to catch one live: seen on the final page)
        assert re.search(r"training: epoch [1-5] of 5, epsilon spent so far \d\.\d{3}", done), done
        assert rival["run_id"] not in done and rival["contract_id"] not in done
        cookies = driver.get_cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("ccr_page", True, "Strict")]
        assert driver.execute_script("return document.cookie") == ""        # HttpOnly: no script reads it
        screenshot(driver, "live-run-page.png")
    finally:
        driver.quit()
        hook.server.stop()

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
    progress = record["progress"]  # attested per epoch (shared/attested_progress.py), only ever forward
    assert progress["epochs"] == 5 and 1 <= progress["epoch"] <= 5, progress
    assert 0 < progress["epsilon_spent"] <= privacy["epsilon"], progress

    assert groups_created(stack, run_id) == 1
    assert remaining_groups(stack) == []
    assert len(scenario.inbox.notices) == 1
    finished = wait_for(lambda: [e for e in scenario.inbox.events if e["subject"] == f"runs/{run_id}"], 30,
                        what="the CCR.Run.Finished event")
    assert finished[0]["eventType"] == events.RUN_FINISHED and finished[0]["data"]["status"] == "succeeded"
    assert finished[0]["data"]["output_blob"] == notice["output_blob"]
    own = wait_for(lambda: hook.events, 30, what="the TDC's own subscription's event")
    assert [e["subject"] for e in own] == [party_events.subject(scenario.identities["tdc"]["did"], run_id)]
