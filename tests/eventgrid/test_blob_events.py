"""The twin's storage system topic: Azurite emits no events, so the twin synthesises
Microsoft.Storage.BlobCreated by polling the containers its subscriptions watch. One event per
created blob version, none for what existed when the subscription was made, the real event's
fields, and nothing lost or repeated across a restart of the twin."""
import uuid

import requests
from azure.storage.blob import BlobBlock, BlobServiceClient

from local_emulator.blob_events import BLOB_CREATED
from tests.conftest import wait_until

DATA_FIELDS = {"api", "clientRequestId", "requestId", "eTag", "contentType", "contentLength", "blobType", "url",
               "sequencer", "storageDiagnostics"}


def _container(azurite):
    return BlobServiceClient.from_connection_string(azurite).create_container(f"ev{uuid.uuid4().hex[:12]}")


def _subscribe(twin, subscriber, container) -> None:
    twin.create_system_topic("storage")
    twin.create_subscription("storage", "arrivals", subscriber.url, event_types=[BLOB_CREATED],
                             subject_begins_with=f"/blobServices/default/containers/{container.container_name}/")


def _events(subscriber) -> list[dict]:
    return [event for note in subscriber.notifications for event in note["body"]]


def test_each_created_blob_version_makes_one_event_and_blobs_there_before_the_subscription_none(
        twin_factory, subscriber_factory, azurite):
    container, elsewhere = _container(azurite), _container(azurite)
    container.upload_blob("old.bin", b"before")
    subscriber = subscriber_factory()
    twin = twin_factory(blob_poll_seconds=0.1)
    _subscribe(twin, subscriber, container)
    assert len(subscriber.validations) == 1   # the handshake came first

    container.upload_blob("a/new.bin", b"12345", content_settings=None)
    first = container.get_blob_client("a/new.bin").get_blob_properties().etag
    wait_until(lambda: len(_events(subscriber)) == 1, 10, message="the first version's event")
    container.upload_blob("a/new.bin", b"123456", overwrite=True)
    staged = container.get_blob_client("staged.bin")
    staged.stage_block("YmxvY2s=", b"xy")
    staged.commit_block_list([BlobBlock("YmxvY2s=")])
    container.get_blob_client("copy.bin").start_copy_from_url(container.get_blob_client("old.bin").url)
    elsewhere.upload_blob("not-watched.bin", b"z")
    wait_until(lambda: len(_events(subscriber)) >= 4, 10, message="four events")
    wait_until(lambda: twin.pending_deliveries() == 0, 10, message="deliveries done")

    events = _events(subscriber)
    assert len(events) == 4   # nothing for old.bin, nothing for the other container, none twice
    by_subject = {}
    for event in events:
        by_subject.setdefault(event["subject"], []).append(event)
    prefix = f"/blobServices/default/containers/{container.container_name}/blobs/"
    assert sorted(by_subject) == [prefix + "a/new.bin", prefix + "copy.bin", prefix + "staged.bin"]
    for event in events:
        assert event["eventType"] == BLOB_CREATED and event["dataVersion"] == "" and event["metadataVersion"] == "1"
        assert event["topic"].endswith("/providers/Microsoft.Storage/storageAccounts/devstoreaccount1")
        assert set(event["data"]) == DATA_FIELDS
        assert event["data"]["blobType"] == "BlockBlob" and not event["data"]["eTag"].startswith('"')
        assert set(event["data"]["storageDiagnostics"]) == {"batchId"}
    versions = by_subject[prefix + "a/new.bin"]
    assert [e["data"]["contentLength"] for e in versions] == [5, 6]
    assert versions[0]["data"]["eTag"] == first.strip('"') != versions[1]["data"]["eTag"]
    assert versions[1]["data"]["url"] == container.get_blob_client("a/new.bin").url
    assert [e["data"]["api"] for e in versions] == ["PutBlob", "PutBlob"]
    assert by_subject[prefix + "staged.bin"][0]["data"]["api"] == "PutBlockList"
    assert by_subject[prefix + "copy.bin"][0]["data"]["api"] == "CopyBlob"
    sequencers = [e["data"]["sequencer"] for e in versions]
    assert sequencers == sorted(sequencers) and len(set(sequencers)) == 2
    assert subscriber.notifications[0]["headers"]["aeg-event-type"] == "Notification"


def test_a_restarted_twin_sends_what_was_written_while_it_was_down_and_nothing_twice(
        twin_factory, subscriber_factory, azurite, tmp_path):
    container = _container(azurite)
    subscriber = subscriber_factory()
    twin = twin_factory(data_dir=tmp_path / "eg", blob_poll_seconds=0.1)
    _subscribe(twin, subscriber, container)
    container.upload_blob("before-stop.bin", b"1")
    wait_until(lambda: len(_events(subscriber)) == 1, 10, message="the first event")
    twin.stop()
    container.upload_blob("while-down.bin", b"2")
    again = twin_factory(data_dir=tmp_path / "eg", blob_poll_seconds=0.1)
    wait_until(lambda: len(_events(subscriber)) >= 2, 10, message="the missed event")
    wait_until(lambda: again.pending_deliveries() == 0, 10, message="deliveries done")
    assert [e["subject"].rsplit("/", 1)[1] for e in _events(subscriber)] == ["before-stop.bin", "while-down.bin"]


def test_nobody_publishes_to_a_system_topic(twin_factory):
    twin = twin_factory()
    twin.create_system_topic("storage")
    response = requests.post(f"{twin.url}/topics/storage/api/events", json=[], timeout=5)
    assert response.status_code == 404
