"""Queue triggers and blob input/output bindings as the storage extension runs them (issue 13
item 8), on one host for the module serving tests/host/queue_blob_app against Azurite:
base64 messages, `{queueTrigger}` and JSON-property binding expressions, str / bytes /
InputStream inputs, Out[str] and `$return` outputs, five dequeues then `<queue>-poison`,
a message that is not base64 poisoned without running, a run longer than the message's lease
kept to one invocation by renewing it, and functions on undefined connection settings refused
at indexing alone."""
import json
import time
import uuid
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import (
    QueueClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from local_emulator.host.blob_bindings import BindingExpressionError, resolve_path
from local_emulator.host.queue_trigger import seconds
from tests.conftest import HostProcess, wait_until
from tests.host.conftest import records

APP_DIR = Path(__file__).parent / "queue_blob_app"
LEASE_SECONDS = 2   # the host's message lease here, instead of Azure's 10 minutes
SLOW_SECONDS = 5    # the slow function outlives two leases


@pytest.fixture(scope="module")
def queue_records(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("queue-records")


@pytest.fixture(scope="module")
def queue_host(azurite, queue_records):
    process = HostProcess(APP_DIR, azurite, env={"CCR_TEST_RECORD_DIR": str(queue_records),
                                                 "QT_JSON_QUEUE": "qt-json", "QT_SLOW_SECONDS": str(SLOW_SECONDS),
                                                 "CCR_HOST_QUEUE_LEASE_SECONDS": str(LEASE_SECONDS)}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def blobs(azurite):
    service = BlobServiceClient.from_connection_string(azurite)
    for name in ("qt-inputs", "qt-outputs"):
        try:
            service.create_container(name)
        except ResourceExistsError:
            pass
    yield service
    service.close()


def send(azurite, queue: str, text: str, base64: bool = True) -> None:
    policy = {"message_encode_policy": TextBase64EncodePolicy()} if base64 else {}
    with QueueClient.from_connection_string(azurite, queue, **policy) as client:
        client.send_message(text)


def blob_text(blobs, container: str, name: str) -> str | None:
    try:
        return blobs.get_blob_client(container, name).download_blob().readall().decode()
    except ResourceNotFoundError:
        return None


def test_a_queue_message_names_the_input_blob_and_the_output_is_written(queue_host, queue_records, blobs, azurite):
    name = f"doc-{uuid.uuid4().hex[:8]}.txt"
    blobs.get_blob_client("qt-inputs", name).upload_blob(b"hello queues")
    send(azurite, "qt-copy", name)
    assert wait_until(lambda: blob_text(blobs, "qt-outputs", name), 15, message="output blob") == "HELLO QUEUES"
    assert records(queue_records, "copy", name) == [f"{name}:1:str"]

    missing = f"missing-{uuid.uuid4().hex[:8]}.txt"
    send(azurite, "qt-copy", missing)
    wait_until(lambda: records(queue_records, "copy", missing), 15, message="missing input handled")
    assert records(queue_records, "copy", missing) == [f"{missing}:1:NoneType"]  # None, once, not retried
    assert blob_text(blobs, "qt-outputs", missing) is None  # an unset Out writes nothing


def test_json_message_properties_bind_bytes_stream_and_return_value(queue_host, blobs, azurite):
    name = f"data-{uuid.uuid4().hex[:8]}.bin"
    blobs.get_blob_client("qt-inputs", name).upload_blob(bytes(range(200)))
    send(azurite, "qt-json", json.dumps({"name": name, "kind": "sizes"}))
    written = wait_until(lambda: blob_text(blobs, "qt-outputs", name + ".sizes"), 15, message="$return blob")
    result = json.loads(written)
    assert (result["bytes"], result["stream"], result["kind"]) == (["bytes", 200], 200, "sizes")
    assert result["id"]


def test_a_failing_message_is_tried_five_times_then_moved_to_the_poison_queue(queue_host, queue_records, azurite):
    text = f"doomed-{uuid.uuid4().hex[:8]}"
    send(azurite, "qt-doomed", text)
    poison = QueueClient.from_connection_string(azurite, "qt-doomed-poison",
                                                message_decode_policy=TextBase64DecodePolicy())

    def poisoned():
        return [m.content for m in poison.peek_messages(max_messages=32) if m.content == text]
    wait_until(poisoned, 20, message="message in the poison queue")
    assert records(queue_records, "doomed", text) == [f"{text}:{n}" for n in range(1, 6)]
    with QueueClient.from_connection_string(azurite, "qt-doomed") as queue:  # copied, then deleted
        wait_until(lambda: queue.get_queue_properties().approximate_message_count == 0, 10,
                   message="the poisoned message deleted from its queue")
    assert records(queue_records, "doomed", text) == [f"{text}:{n}" for n in range(1, 6)]  # and not run again
    for message in poison.receive_messages():
        if message.content == text:
            poison.delete_message(message)
    poison.close()


def test_a_run_longer_than_the_lease_keeps_its_message_and_runs_once(queue_host, queue_records, azurite):
    """Without renewal the message would be visible again after 2 s and a second invocation
    would start while the first still runs; with it, one run, then the message is gone."""
    send(azurite, "qt-slow", "long")
    wait_until(lambda: any(line.endswith(":end") for line in records(queue_records, "slow")), timeout=30)
    time.sleep(LEASE_SECONDS)  # time for a wrongly released message to be picked up again
    assert records(queue_records, "slow") == ["long:1:start", "long:1:end"]
    with QueueClient.from_connection_string(azurite, "qt-slow") as client:
        assert client.get_queue_properties().approximate_message_count == 0


def test_a_message_that_is_not_base64_is_poisoned_without_running(queue_host, queue_records, azurite):
    text = "not base64 at all: " + uuid.uuid4().hex
    send(azurite, "qt-doomed", text, base64=False)
    with QueueClient.from_connection_string(azurite, "qt-doomed-poison") as poison:
        wait_until(lambda: any(m.content == text for m in poison.peek_messages(max_messages=32)), 20,
                   message="undecodable message poisoned")
    assert not any(text in line for line in records(queue_records, "doomed"))


def test_a_blob_triggers_path_names_name_its_output_blob(queue_host, blobs):
    stem = f"arrival-{uuid.uuid4().hex[:8]}"
    try:
        blobs.create_container("qt-arrivals")
    except ResourceExistsError:
        pass
    blobs.get_blob_client("qt-arrivals", stem + ".txt").upload_blob(b"12345")
    receipt = wait_until(lambda: blob_text(blobs, "qt-outputs", stem + ".receipt"), 15, message="receipt blob")
    assert receipt == "seen 5"


def test_an_http_route_parameter_names_the_input_blob(queue_host, blobs):
    name = f"page-{uuid.uuid4().hex[:8]}.txt"
    blobs.get_blob_client("qt-inputs", name).upload_blob(b"served from a blob")
    key = {"code": queue_host.function_key}
    answer = requests.get(f"{queue_host.url}/api/blobs/{name}", params=key, timeout=10)
    assert (answer.status_code, answer.text) == (200, "served from a blob")
    assert requests.get(f"{queue_host.url}/api/blobs/absent.txt", params=key, timeout=10).status_code == 404


def test_undefined_connections_and_unsupported_bindings_fail_indexing_alone(queue_host, queue_records):
    logs = queue_host.logs()
    for function, setting in (("queue_on_undefined_account", "UndefinedQueueAccount"),
                              ("blob_on_undefined_account", "UndefinedBlobAccount")):
        assert f"Error indexing method 'Functions.{function}'. The connection setting '{setting}'" in logs
    assert requests.get(f"{queue_host.url}/api/undefined", params={"code": queue_host.function_key},
                        timeout=10).status_code == 404
    assert ("Error indexing method 'Functions.needs_table_output'. Binding type(s) 'table' are not supported "
            "by the local host.") in logs
    assert ("Error indexing method 'Functions.queue_named_by_an_undefined_setting'. '%QT_UNDEFINED_QUEUE%' "
            "does not resolve to a value.") in logs
    assert "7 functions" in logs and records(queue_records, "never") == []


def test_binding_expressions_and_host_json_durations(monkeypatch):
    monkeypatch.setenv("OUTPUT_CONTAINER", "results")
    assert resolve_path("%OUTPUT_CONTAINER%/{queueTrigger}", {"queueTrigger": "a.txt"}) == "results/a.txt"
    with pytest.raises(BindingExpressionError, match="'%NO_SUCH_SETTING%' does not resolve"):
        resolve_path("%NO_SUCH_SETTING%/x", {})
    assert resolve_path("out/{queueTrigger}-{Name}.txt", {"queuetrigger": "a", "name": "b"}) == "out/a-b.txt"
    assert len(resolve_path("out/{rand-guid}", {})) == len("out/") + 36
    with pytest.raises(BindingExpressionError, match="No value for named parameter 'nope'"):
        resolve_path("out/{nope}", {"queueTrigger": "x"})
    assert (seconds("00:01:00"), seconds("00:00:00.500"), seconds("1.00:00:02"), seconds(2000)) == (
        60.0, 0.5, 86402.0, 2.0)
    with pytest.raises(ValueError, match="not a duration"):
        seconds("soon")
