"""kill -9 the host while an entity batch is between running and being acknowledged, start it
again: every accepted request is applied to the state exactly once and every call is
answered. Points (CCR_FAULT_POINT): durable.entity.before_commit (the operation ran, its
state is not written: it runs again, once applied) and durable.entity.after_commit (state
written, its response not sent and its message still queued: it must not run again, and the
response still reaches the orchestrator)."""
import uuid

import requests
from azure.storage.queue import QueueClient

from tests.conftest import wait_until
from tests.host.test_entities import APP_DIR, WEBHOOK, executions


def test_kill_9_around_an_entity_batch_commit_applies_each_request_once(function_host, tmp_path, azurite):
    host = function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(tmp_path),
                                       "CCR_FAULT_POINT": "durable.entity.after_commit"})
    webhook, key = f"{host.url}{WEBHOOK}", {"code": host.system_key}
    control = QueueClient.from_connection_string(azurite, f"{host.hub.lower()}-control")
    called, signalled = "c" + uuid.uuid4().hex[:8], "s" + uuid.uuid4().hex[:8]

    def state(entity_key: str):
        answer = requests.get(f"{webhook}/entities/Counter/{entity_key}", params=key, timeout=10)
        return answer.json() if answer.status_code == 200 else None

    def died_at(point: str) -> None:
        wait_until(lambda: f"fault point {point} reached" in host.logs(), 30, 0.1, f"host reached {point}")
        host.kill()

    # 1. an orchestrator's call: the batch commits, the host dies before the response is sent
    started = requests.post(f"{webhook}/orchestrators/add_once", params=key,
                            json={"key": called, "amount": 5}, timeout=30)
    assert started.status_code == 202
    instance_id = started.json()["id"]
    died_at("durable.entity.after_commit")
    assert executions(tmp_path, called) == ["add"]
    host.env["CCR_FAULT_POINT"] = "durable.entity.before_commit"
    host.start()

    def completed():
        body = requests.get(f"{webhook}/instances/{instance_id}", params=key, timeout=10).json()
        return body if body["runtimeStatus"] == "Completed" else None
    assert wait_until(completed, 40, 0.2, "the call answered after the restart")["output"] == 5
    assert executions(tmp_path, called) == ["add"], "an operation whose batch was committed ran again"
    assert state(called) == 5

    # 2. a client's signal: the operation runs, the host dies before its state is written
    answer = requests.post(f"{webhook}/entities/Counter/{signalled}", params={**key, "op": "add"}, json="3",
                           timeout=30)
    assert answer.status_code == 202  # accepted: from here on it must not be lost
    died_at("durable.entity.before_commit")
    host.env["CCR_FAULT_POINT"] = ""
    host.start()
    wait_until(lambda: state(signalled) == 3, 40, 0.2, "the accepted signal applied after the restart")
    wait_until(lambda: control.get_queue_properties().approximate_message_count == 0, 40, 0.2,
               "every message acknowledged")
    assert executions(tmp_path, signalled) == ["add", "add"]  # ran again, as it was never committed
    assert state(signalled) == 3 and state(called) == 5  # applied once each
    control.close()
