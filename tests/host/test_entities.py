"""Durable entities on the local host (issue 13 item 5), driven through the real SDK: an
orchestrator's call_entity / signal_entity, the client's signal_entity / read_entity_state,
and the entity HTTP API behind the system key. One host for the module; each test uses its
own entity keys."""
import datetime as dt
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import HostProcess, wait_until

APP_DIR = Path(__file__).parent / "entity_app"
WEBHOOK = "/runtime/webhooks/durabletask"


@pytest.fixture(scope="module")
def ops_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("entity-ops")


@pytest.fixture(scope="module")
def host(azurite, ops_dir):
    process = HostProcess(APP_DIR, azurite, env={"CCR_TEST_RECORD_DIR": str(ops_dir)}).start()
    yield process
    process.stop()


def executions(ops_dir: Path, key: str) -> list[str]:
    """Operations the entity function really ran for this key, in order."""
    path = ops_dir / "ops.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split(":", 1)[1] for line in lines if line.split(":", 1)[0] == key]


def new_key() -> str:
    return uuid.uuid4().hex[:12]


def start(host, orchestrator: str, payload) -> str:
    response = requests.post(f"{host.url}{WEBHOOK}/orchestrators/{orchestrator}", params={"code": host.system_key},
                             json=payload, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished(host, instance_id: str, timeout: float = 30.0) -> dict:
    def done():
        body = requests.get(f"{host.url}{WEBHOOK}/instances/{instance_id}",
                            params={"code": host.system_key, "showHistory": "true"}, timeout=10).json()
        return body if body and body["runtimeStatus"] not in ("Pending", "Running") else None
    return wait_until(done, timeout, 0.1, f"instance {instance_id} finished")


def sdk_signal(host, name: str, key: str, op: str, value=None) -> None:
    response = requests.post(f"{host.url}/api/entity/signal/{name}/{key}", params={"code": host.function_key},
                             json={"op": op, "input": value}, timeout=30)
    assert response.status_code == 202, response.text


def sdk_read(host, name: str, key: str) -> dict:
    response = requests.get(f"{host.url}/api/entity/read/{name}/{key}", params={"code": host.function_key},
                            timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def http_entity(host, method: str, path: str, key: str | None = "system", **kwargs) -> requests.Response:
    params = {**kwargs.pop("params", {}), **({"code": host.system_key} if key == "system" else {})}
    return requests.request(method, f"{host.url}{WEBHOOK}/entities/{path}", params=params, timeout=30, **kwargs)


def test_orchestrator_calls_and_signals_the_counter(host, ops_dir):
    """The signal (one-way) is applied before the call that follows it, the call's result comes
    back, a refused operation raises in the orchestrator with the entity's message, and the
    history records each request as EventSent and each answer as EventRaised."""
    key = new_key()
    done = finished(host, start(host, "counter_workflow", {"key": key}))
    assert done["runtimeStatus"] == "Completed", done
    output = done["output"]
    assert (output["after"], output["final"]) == (7, 7)
    assert "amounts must not be negative" in output["refused"]
    kinds = [event["EventType"] for event in done["historyEvents"]]
    assert kinds.count("EventSent") == 4 and kinds.count("EventRaised") == 3
    sent = [event for event in done["historyEvents"] if event["EventType"] == "EventSent"]
    assert {event["InstanceId"] for event in sent} == {f"@counter@{key}"}
    assert executions(ops_dir, key) == ["add", "add", "add", "get"]  # each operation ran once
    assert sdk_read(host, "Counter", key) == {"exists": True, "state": 7}


def test_sequential_calls_replay_their_answers(host, ops_dir):
    key = new_key()
    done = finished(host, start(host, "count_up", {"key": key, "n": 4}))
    assert (done["runtimeStatus"], done["output"]) == ("Completed", [1, 2, 3, 4])
    assert executions(ops_dir, key) == ["add"] * 4


def test_calls_awaited_together_each_get_their_own_answer(host):
    keys = [new_key(), new_key()]
    sdk_signal(host, "Counter", keys[1], "add", 10)
    wait_until(lambda: sdk_read(host, "Counter", keys[1])["state"] == 10, 20, 0.1, "setup signal applied")
    done = finished(host, start(host, "parallel_calls", {"keys": keys}))
    assert (done["runtimeStatus"], done["output"]) == ("Completed", [1, 12])
    wait_until(lambda: sdk_read(host, "journal", keys[0])["state"] == ["between"], 20, 0.1, "signal applied")


def test_calls_to_an_entity_the_app_lacks_or_an_unusable_key_fail_in_the_orchestrator(host):
    done = finished(host, start(host, "call_refused", None))
    assert done["runtimeStatus"] == "Completed"
    missing, bad_key = done["output"]
    assert "The function 'nowhere' doesn't exist" in missing
    assert "Entity keys must be non-empty" in bad_key


def test_client_signal_and_read_through_the_sdk(host, ops_dir):
    key = new_key()
    assert sdk_read(host, "Counter", key) == {"exists": False, "state": None}
    sdk_signal(host, "Counter", key, "add", 3)
    sdk_signal(host, "Counter", key, "add", 4)
    wait_until(lambda: sdk_read(host, "Counter", key)["state"] == 7, 20, 0.1, "both signals applied")
    assert executions(ops_dir, key) == ["add", "add"]


def test_signals_are_applied_one_at_a_time_in_order(host):
    key = new_key()
    for value in range(1, 16):  # (the SDK client sends no input at all for a falsy one)
        sdk_signal(host, "journal", key, "append", value)
    def all_applied():
        state = sdk_read(host, "journal", key)["state"]
        return state if state and len(state) == 15 else None
    assert wait_until(all_applied, 30, 0.1, "all appends applied") == list(range(1, 16))


def test_a_failed_operation_fails_alone(host, ops_dir):
    """Operations around a failed one keep their changes; the failed one reports its error to
    its caller and, refusing before any change, leaves the state as it was."""
    key = new_key()
    sdk_signal(host, "Counter", key, "add", 1)
    sdk_signal(host, "Counter", key, "add", -5)
    sdk_signal(host, "Counter", key, "add", 2)
    # (an operation is recorded while it runs, before its batch is committed: wait for the state)
    wait_until(lambda: sdk_read(host, "Counter", key)["state"] == 3, 20, 0.1, "1 and 2 added")
    assert executions(ops_dir, key) == ["add", "add", "add"]


def test_state_a_failing_operation_set_before_raising_stands_as_on_azure(host, ops_dir):
    """The extension keeps the state the SDK returns for an out-of-process batch, and the Python
    SDK does not undo what the failing operation set before it raised (its result is still an
    error): the host keeps the same state, so an app relying on a rollback fails here as there."""
    key = new_key()
    sdk_signal(host, "Counter", key, "add", 1)
    sdk_signal(host, "Counter", key, "add_then_fail", 10)
    wait_until(lambda: len(executions(ops_dir, key)) == 2, 20, 0.1, "both operations ran")
    wait_until(lambda: sdk_read(host, "Counter", key)["state"] == 11, 20, 0.1, "the failed change kept")
    assert "failed after changing the state" not in host.logs()  # operation errors are results, not crashes


def test_a_batch_the_sdk_cannot_finish_changes_nothing_and_fails_its_calls(host):
    """A state the SDK cannot serialize makes the entity function itself raise: no result for
    any operation, so the batch is not committed and every call in it gets the error."""
    key = new_key()
    sdk_signal(host, "Counter", key, "add", 4)
    wait_until(lambda: sdk_read(host, "Counter", key)["state"] == 4, 20, 0.1, "setup signal applied")
    done = finished(host, start(host, "call_op", {"key": key, "op": "unstorable"}))
    assert done["output"]["result"] is None
    assert "Entity function 'counter' failed: TypeError" in done["output"]["error"]
    assert sdk_read(host, "Counter", key) == {"exists": True, "state": 4}
    assert "entity counter: batch of 1 operations failed as a whole (TypeError)" in host.logs()


def test_entity_http_api_with_the_system_key(host, ops_dir):
    key = new_key()
    # a JSON body is the operation's input; a text/plain body is a string, which get_input reads as JSON
    assert http_entity(host, "POST", f"Counter/{key}", params={"op": "add"}, data="4",
                       headers={"Content-Type": "text/plain"}).status_code == 202
    assert http_entity(host, "POST", f"counter/{key}", params={"op": "add"}, json="6").status_code == 202
    wait_until(lambda: http_entity(host, "GET", f"Counter/{key}").status_code == 200, 20, 0.1, "entity created")
    wait_until(lambda: http_entity(host, "GET", f"Counter/{key}").json() == 10, 20, 0.1, "both applied")
    listed = http_entity(host, "GET", "Counter", params={"fetchState": "true"}).json()
    mine = [item for item in listed if item["entityId"]["key"] == key]
    assert mine and mine[0]["entityId"]["name"] == "counter" and mine[0]["state"] == 10
    assert mine[0]["lastOperationTime"]
    assert "state" not in http_entity(host, "GET", "Counter").json()[0]

    assert http_entity(host, "POST", f"Counter/{key}", params={"op": "delete"}).status_code == 202
    wait_until(lambda: http_entity(host, "GET", f"Counter/{key}").status_code == 404, 20, 0.1, "entity deleted")
    assert sdk_read(host, "Counter", key) == {"exists": False, "state": None}
    assert key not in [item["entityId"]["key"] for item in http_entity(host, "GET", "Counter").json()]


def test_entity_api_refuses_callers_without_the_system_key_and_queues_nothing(host, ops_dir):
    key = new_key()
    for code in (None, host.function_key, "wrong"):
        params = {"op": "add", **({"code": code} if code else {})}
        answer = http_entity(host, "POST", f"Counter/{key}", key=None, params=params, json="1")
        assert answer.status_code == 401
        assert http_entity(host, "GET", f"Counter/{key}", key=None, params=params).status_code == 401
    sdk_signal(host, "Counter", key, "get")  # a later request, queued after anything the refused ones left
    # ('get' makes the entity exist, as the SDK's set_result does)
    wait_until(lambda: http_entity(host, "GET", f"Counter/{key}").status_code == 200, 20, 0.1, "request applied")
    assert executions(ops_dir, key) == ["get"]
    assert http_entity(host, "GET", f"Counter/{key}").json() is None  # no refused 'add' was applied


def test_unknown_entity_names_and_unusable_keys_are_refused(host):
    answer = http_entity(host, "POST", "Nowhere/k", params={"op": "add"}, json="1")
    assert answer.status_code == 400 and "'Nowhere' doesn't exist" in answer.json()["ExceptionMessage"]
    assert http_entity(host, "GET", "Nowhere").status_code == 400
    answer = http_entity(host, "POST", "Counter/a%23b", params={"op": "add"}, json="1")
    assert answer.status_code == 400 and "Entity keys" in answer.json()["ExceptionMessage"]
    assert http_entity(host, "POST", "Counter/k", params={"op": "add"}, data="{not json",
                       headers={"Content-Type": "application/json"}).status_code == 400


def test_an_orchestration_cannot_take_an_entity_id(host):
    """Ids starting with @ belong to entities: an orchestration started under one would have its
    messages handed to the entity dispatcher (or squat an entity's id), so it is refused."""
    key = new_key()
    answer = requests.post(f"{host.url}{WEBHOOK}/orchestrators/add_once/@counter@{key}",
                           params={"code": host.system_key}, json={"key": key, "amount": 1}, timeout=30)
    assert answer.status_code == 400 and "must not start with @" in answer.text
    assert requests.get(f"{host.url}{WEBHOOK}/instances/@counter@{key}", params={"code": host.system_key},
                        timeout=10).status_code == 404
    assert http_entity(host, "GET", f"Counter/{key}").status_code == 404


def test_applied_message_keys_are_forgotten_only_when_old_and_not_among_the_newest():
    """The dedup keys stay bounded, yet a message committed just before a long outage is still
    recognised when it is delivered again after the restart."""
    from local_emulator.host.durable import history as h
    from local_emulator.host.durable.entity_store import EntityRecord
    old = h.iso(h.utc_now() - dt.timedelta(hours=2))
    older = h.iso(h.utc_now() - dt.timedelta(hours=3))
    record = EntityRecord("@counter@k", processed={**{f"older{i}": older for i in range(5)},
                                                    **{f"old{i}": old for i in range(3)},
                                                    "fresh": h.iso(h.utc_now())})
    record.forget_older_than(600, keep=4)
    assert set(record.processed) == {"fresh", "old0", "old1", "old2"}
