"""Blob triggers (once per blob version, receipts survive a restart, poison queue after five
failures) and Event Grid triggers (both schemas, validation handshake, keys)."""
import json
import time
import uuid

import pytest
import requests
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from tests.conftest import wait_until
from tests.host.conftest import APP_DIR, records


@pytest.fixture
def container(azurite):
    name = "blobs-" + uuid.uuid4().hex[:12]
    client = BlobServiceClient.from_connection_string(azurite).create_container(name)
    yield client
    client.delete_container()


@pytest.fixture
def blob_host(function_host, record_dir, container):
    return function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(record_dir),
                                       "TEST_BLOB_CONTAINER": container.container_name})


def fired(record_dir, container) -> list[str]:
    return [line for line in records(record_dir, "blob") if line.startswith(container.container_name + "/")]


def test_each_blob_version_fires_once_and_not_again_after_restart(blob_host, record_dir, container):
    for name in ("a.csv", "b.csv", "c/d.csv"):
        container.upload_blob(name, b"x" * 10)
    wait_until(lambda: len(fired(record_dir, container)) == 3, 20, message="three blobs fired")
    time.sleep(1.0)  # five more polls
    assert sorted(fired(record_dir, container)) == sorted(
        f"{container.container_name}/{name}:10:10" for name in ("a.csv", "b.csv", "c/d.csv"))

    container.upload_blob("a.csv", b"yy", overwrite=True)  # new version: fires again
    wait_until(lambda: len(fired(record_dir, container)) == 4, 20, message="new version fired")

    blob_host.stop()
    blob_host.start()
    container.upload_blob("e.csv", b"z")
    wait_until(lambda: len(fired(record_dir, container)) == 5, 20, message="blob after restart fired")
    time.sleep(1.0)
    lines = fired(record_dir, container)
    assert len(lines) == 5 and lines[-1] == f"{container.container_name}/e.csv:1:1"


def test_stopping_the_host_mid_invocation_still_keeps_its_receipt(blob_host, record_dir, container):
    container.upload_blob("slow-1.csv", b"abc")
    wait_until(lambda: len(fired(record_dir, container)) == 1, 20, message="slow blob fired")
    blob_host.stop()  # SIGTERM while the function is still sleeping
    blob_host.start()
    container.upload_blob("after.csv", b"z")
    wait_until(lambda: len(fired(record_dir, container)) == 2, 20, message="blob after restart fired")
    time.sleep(1.0)
    assert fired(record_dir, container) == [f"{container.container_name}/slow-1.csv:3:3",
                                            f"{container.container_name}/after.csv:1:1"]


def test_a_blob_that_keeps_failing_lands_on_the_poison_queue(blob_host, record_dir, container, azurite):
    container.upload_blob("poison-1.bin", b"bad")
    poison = QueueClient.from_connection_string(azurite, "webjobs-blobtrigger-poison",
                                                message_decode_policy=TextBase64DecodePolicy())

    def poison_message():
        for message in poison.peek_messages(max_messages=32):
            body = json.loads(message.content)
            if body["ContainerName"] == container.container_name:
                return body
    body = wait_until(poison_message, 30, 0.2, "poison message")
    assert body["BlobName"] == "poison-1.bin" and body["Type"] == "BlobTrigger"
    assert body["FunctionId"].endswith(".on_blob") and body["BlobType"] == "BlockBlob" and body["ETag"]
    time.sleep(1.0)  # no further attempts after poisoning
    assert len(fired(record_dir, container)) == 5
    logs = blob_host.logs()  # failures are logged as the Functions host logs them: type, message, traceback
    assert "invoked on_blob trigger=blobTrigger" in logs and "outcome=failed (ValueError)" in logs
    assert "ValueError: this blob always fails" in logs and "Traceback (most recent call last)" in logs


def eventgrid_url(host) -> str:
    return f"{host.url}/runtime/webhooks/eventgrid"


def test_eventgrid_validation_handshake_and_key(host, record_dir):
    validation = [{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "",
                   "data": {"validationCode": "abc-123"}, "dataVersion": "1", "eventTime": "2026-01-01T00:00:00Z"}]
    params = {"functionName": "on_event", "code": host.eventgrid_key}
    response = requests.post(eventgrid_url(host), params=params, json=validation, timeout=10)
    assert response.status_code == 200 and response.json() == {"validationResponse": "abc-123"}
    for code in (None, host.function_key, "wrong"):
        refused = requests.post(eventgrid_url(host), params={"functionName": "on_event", "code": code},
                                json=validation, timeout=10)
        assert refused.status_code == 401
    origin = {"WebHook-Request-Origin": "eventgrid.azure.net"}
    options = requests.options(eventgrid_url(host), params=params, headers=origin, timeout=10)
    assert options.status_code == 200 and options.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    keyless = requests.options(eventgrid_url(host), params={"functionName": "on_event"}, headers=origin, timeout=10)
    assert keyless.status_code == 401 and "WebHook-Allowed-Origin" not in keyless.headers
    assert records(record_dir, "eventgrid") == []


def test_eventgrid_and_cloudevents_bodies_invoke_once_per_event(host, record_dir):
    params = {"functionName": "on_event", "code": host.eventgrid_key}
    batch = [{"id": str(i), "eventType": "CCR.Test", "subject": f"runs/{i}", "data": {"n": i},
              "dataVersion": "1", "eventTime": "2026-01-01T00:00:00Z", "topic": "t"} for i in range(2)]
    assert requests.post(eventgrid_url(host), params=params, json=batch, timeout=10).status_code == 200
    cloud = {"specversion": "1.0", "id": "c1", "source": "/ccr", "type": "CCR.Cloud", "subject": "runs/9",
             "time": "2026-01-01T00:00:00Z", "data": {"n": 9}}
    response = requests.post(eventgrid_url(host), params=params, data=json.dumps(cloud),
                             headers={"Content-Type": "application/cloudevents+json"}, timeout=10)
    assert response.status_code == 200
    assert records(record_dir, "eventgrid") == ["CCR.Test:runs/0:0", "CCR.Test:runs/1:1", "CCR.Cloud:runs/9:9"]
    assert requests.post(eventgrid_url(host), params=params, data=b"not json", timeout=10).status_code == 400
    unknown = requests.post(eventgrid_url(host), params={**params, "functionName": "nope"}, json=batch, timeout=10)
    assert unknown.status_code == 404
    assert len(records(record_dir, "eventgrid")) == 3


def test_a_blob_trigger_can_start_an_orchestration_with_its_durable_client(blob_host, record_dir, container):
    container.upload_blob("start-job", b"go")
    wait_until(lambda: len(records(record_dir, "work", "start-job")) == 2, 30, message="orchestration ran")
    status_url = (f"{blob_host.url}/runtime/webhooks/durabletask/instances/"
                  f"blob-{container.container_name}-start-job")
    done = wait_until(lambda: (lambda s: s if s["runtimeStatus"] == "Completed" else None)(
        requests.get(status_url, params={"code": blob_host.system_key}, timeout=10).json()), 30,
        message="orchestration completed")
    assert done["output"] == 10 and done["name"] == "fan_out"
