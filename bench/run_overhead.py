"""Where the time of a clean-room run goes on the local emulators: control plane (contract
accepted by the webhook -> trainer started; trainer finished -> TDC notified) versus the
trainer itself, for one COVID run and for 10 contracts submitted at once.

Prints the figures; the last line is one JSON object. Goal: control plane < 2 s per run.
`CCR_TRAINER_IMAGE=oci` runs it on the real trainer image (10 of 10 concurrent runs succeed
since DP-SGD's noise is finite, trainer_container/secure_random.py; 8 of 10 before).
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_emulator.covid_scenario import CovidScenario  # noqa: E402
from local_emulator.stack import Stack, wait_for  # noqa: E402
from shared.json_blobs import JsonBlobs  # noqa: E402
from shared.contract_store import contract_key  # noqa: E402
from shared.run_records import run_id_for  # noqa: E402
from azure.storage.blob import BlobServiceClient  # noqa: E402

CONCURRENT = 10
PHASES_BEFORE_TRAINING = ("validating", "gathering_key_grants", "reserving_budget", "deploying")


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def split(stack: Stack, scenario: CovidScenario) -> dict:
    """Seconds per part of one finished run, from the run record and the contract store."""
    service = BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])
    accepted = _t(JsonBlobs(service, "contracts").get(
        f"{contract_key(scenario.contract_id, scenario.digest)}.json")["accepted"])
    record = JsonBlobs(service, "runs").get(f"records/{run_id_for(scenario.contract_id, scenario.digest)}.json")
    training = record["phases"]["training"]
    notified = scenario.inbox.received_at[0]
    start = (_t(training["started"]) - accepted).total_seconds()
    end = (notified - _t(training["ended"])).total_seconds()
    before_training = [name for name in PHASES_BEFORE_TRAINING if name in record["phases"]]
    first = _t(record["phases"][before_training[0]]["started"]) if before_training else _t(training["started"])
    phases = {"admission": round((first - accepted).total_seconds(), 3),
              **{name: round((_t(record["phases"][name]["ended"]) - _t(record["phases"][name]["started"]))
                             .total_seconds(), 3) for name in before_training}}
    return {"status": record["status"], "control_plane_start_s": round(start, 3), "phases_before_training_s": phases,
            "trainer_s": round((_t(training["ended"]) - _t(training["started"])).total_seconds(), 3),
            "control_plane_end_s": round(end, 3), "control_plane_s": round(start + end, 3)}


def prepared(stack: Stack, root: Path, name: str) -> CovidScenario:
    scenario = CovidScenario(stack, root / name, contract_id=name, echo=lambda _: None)
    scenario.publish_inputs()
    scenario.create_identities()
    scenario.contract = scenario.write_contract()
    return scenario


def main() -> dict:
    with tempfile.TemporaryDirectory(prefix="ccr-bench-") as tmp, Stack(Path(tmp) / "stack") as stack:
        single = prepared(stack, Path(tmp), "bench-single")
        began = time.monotonic()
        single.sign_and_submit(single.contract)
        single.wait_for_notice(600)
        one = {**split(stack, single), "wall_s": round(time.monotonic() - began, 3)}
        single.close()
        print(f"one run: {one}")

        many = [prepared(stack, Path(tmp), f"bench-many-{i}") for i in range(CONCURRENT)]
        began = time.monotonic()
        for scenario in many:
            scenario.sign_and_submit(scenario.contract)
        wait_for(lambda: all(s.inbox.notices for s in many), 1200, interval=1, what="all runs")
        wall = time.monotonic() - began
        parts = [split(stack, s) for s in many]
        for scenario in many:
            scenario.close()
        control = [p["control_plane_s"] for p in parts]
        ten = {"runs": CONCURRENT, "succeeded": sum(p["status"] == "succeeded" for p in parts),
               "wall_s": round(wall, 3), "control_plane_s_p50": round(statistics.median(control), 3),
               "control_plane_s_max": round(max(control), 3),
               "control_plane_start_s_p50": round(statistics.median(p["control_plane_start_s"] for p in parts), 3),
               "control_plane_end_s_p50": round(statistics.median(p["control_plane_end_s"] for p in parts), 3),
               "trainer_s_p50": round(statistics.median(p["trainer_s"] for p in parts), 3)}
        print(f"{CONCURRENT} at once: {ten}")
    return {"benchmark": "run_overhead", "single": one, "concurrent": ten, "goal_control_plane_s": 2.0,
            "single_meets_goal": one["control_plane_s"] < 2.0}


if __name__ == "__main__":
    print(json.dumps(main()))
