"""Blob triggers with source=EventGrid on the local host, fed by the Event Grid twin's storage
system topic as Azure feeds them: the subscription handshake at the blobs extension's webhook,
one invocation per created blob with that blob, none for a blob outside the trigger's path, a
wrong or missing blobs_extension key refused, a failing blob poisoned after five attempts."""
import json
import time
import uuid
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from local_emulator.blob_events import BLOB_CREATED
from local_emulator.eventgrid import EventGridTwin
from local_emulator.host.blob_trigger import POISON_QUEUE
from tests.conftest import HostProcess, wait_until
from tests.eventgrid.conftest import FAST

APP_DIR = Path(__file__).parent / "eventgrid_blob_app"
WEBHOOK = "/runtime/webhooks/blobs"


@pytest.fixture(scope="module")
def setup(azurite, tmp_path_factory):
    """One host, one twin subscribed to the container as infra/subscriptions.bicep subscribes."""
    records = tmp_path_factory.mktemp("records")
    container = BlobServiceClient.from_connection_string(azurite).create_container(f"eg{uuid.uuid4().hex[:12]}")
    host = HostProcess(APP_DIR, azurite, env={"CCR_TEST_RECORD_DIR": str(records),
                                              "TEST_EG_CONTAINER": container.container_name}).start()
    twin = EventGridTwin(tmp_path_factory.mktemp("eventgrid"), azurite, retry=FAST, blob_poll_seconds=0.1).start()
    twin.create_system_topic("storage")
    twin.create_subscription(
        "storage", "arrivals", f"{host.url}{WEBHOOK}?functionName=Host.Functions.arrived&code={host.blobs_key}",
        event_types=[BLOB_CREATED], subject_begins_with=f"/blobServices/default/containers/{container.container_name}/")
    yield host, twin, container, records / "arrivals.log"
    twin.stop()
    host.stop()
    container.delete_container()


def _arrivals(log: Path, name: str) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split(":", 1)[0].endswith("/" + name)]


def test_a_created_blob_invokes_its_function_once_with_that_blob_and_one_outside_the_path_does_not(setup):
    host, twin, container, log = setup   # the subscription exists: the handshake was answered
    tag = uuid.uuid4().hex[:8]
    container.upload_blob(f"other/{tag}.bin", b"outside the trigger's path")
    container.upload_blob(f"in/{tag}.bin", b"inside")
    etag = container.get_blob_client(f"in/{tag}.bin").get_blob_properties().etag
    wait_until(lambda: _arrivals(log, f"in/{tag}.bin"), 15, message="the function ran")
    wait_until(lambda: twin.pending_deliveries() == 0, 10, message="both events delivered")
    time.sleep(0.5)   # a second invocation, if any, would land by now
    assert _arrivals(log, f"in/{tag}.bin") == [f"{container.container_name}/in/{tag}.bin:{etag}"]
    assert _arrivals(log, f"other/{tag}.bin") == []


def _post(host, query: dict, body, event_type="Notification") -> requests.Response:
    return requests.post(f"{host.url}{WEBHOOK}", params=query, data=json.dumps(body),
                         headers={"aeg-event-type": event_type, "Content-Type": "application/json"}, timeout=10)


def _event(container, name: str) -> dict:
    return {"id": str(uuid.uuid4()), "eventType": BLOB_CREATED, "subject": f"/blobServices/default/containers/"
            f"{container.container_name}/blobs/{name}", "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "",
            "data": {"url": container.get_blob_client(name).url, "eTag": "0x1", "blobType": "BlockBlob"}}


def test_the_webhook_refuses_a_missing_or_wrong_key_and_other_functions(setup):
    host, _, container, log = setup
    event = [_event(container, "in/never-sent.bin")]
    function = "Host.Functions.arrived"
    assert _post(host, {"functionName": function}, event).status_code == 401
    assert _post(host, {"functionName": function, "code": "not-the-key"}, event).status_code == 401
    assert _post(host, {"functionName": function, "code": host.eventgrid_key}, event).status_code == 401
    assert _post(host, {"functionName": function, "code": host.function_key}, event).status_code == 401
    assert _post(host, {"functionName": "arrived", "code": host.blobs_key}, event).status_code == 404
    assert _post(host, {"functionName": "Host.Functions.nope", "code": host.blobs_key}, event).status_code == 404
    assert _post(host, {"functionName": function, "code": host.blobs_key}, event, "Other").status_code == 400
    validation = {"id": "1", "type": "Microsoft.EventGrid.SubscriptionValidationEvent", "source": "x",
                  "specversion": "1.0", "data": json.dumps({"validationCode": "CODE-1"})}
    answered = _post(host, {"functionName": function, "code": host.blobs_key}, validation, "SubscriptionValidation")
    assert answered.status_code == 200 and answered.json() == {"validationResponse": "CODE-1"}
    refused = _post(host, {"functionName": function}, validation, "SubscriptionValidation")
    assert refused.status_code == 401
    assert _arrivals(log, "in/never-sent.bin") == []


def test_a_blob_whose_function_keeps_failing_is_poisoned_after_five_attempts(setup, azurite):
    _, _, container, log = setup
    name = f"in/fail-{uuid.uuid4().hex[:8]}.bin"
    container.upload_blob(name, b"x")
    poison = QueueClient.from_connection_string(azurite, POISON_QUEUE, message_decode_policy=TextBase64DecodePolicy())

    def poisoned():
        try:
            messages = [json.loads(m.content) for m in poison.peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return None   # the queue is made with the first poison message
        return [m for m in messages if m.get("BlobName") == name]
    found = wait_until(poisoned, 20, 0.2, "the poison message")
    assert found[0]["FunctionId"] == "Host.Functions.arrived" and found[0]["ContainerName"] == container.container_name
    assert len(_arrivals(log, name)) == 5
