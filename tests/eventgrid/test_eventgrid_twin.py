"""The Event Grid twin, driven by the official azure-eventgrid publisher client: SAS-key auth,
validation handshake, filtered webhook delivery, retries, dead letters in Azurite."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import requests
from azure.core.credentials import AzureKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient, generate_sas
from azure.storage.blob import BlobServiceClient

from local_emulator.delivery import RetryPolicy
from local_emulator.eventgrid import CLOUD_EVENT_SCHEMA, SubscriptionValidationFailed
from tests.conftest import wait_until as wait_for


def event(event_type="CCR.Trainer.Completed", subject="runs/run-1", data=None) -> EventGridEvent:
    return EventGridEvent(subject=subject, event_type=event_type, data=data or {"run_id": "run-1"},
                          data_version="1.0")


def publisher(topic, key=None) -> EventGridPublisherClient:
    return EventGridPublisherClient(topic.endpoint, AzureKeyCredential(key or topic.key))


def dead_letters(azurite, container) -> list[dict]:
    client = BlobServiceClient.from_connection_string(azurite).get_container_client(container)
    if not client.exists():
        return []
    return [(blob.name, json.loads(client.download_blob(blob.name).readall())) for blob in client.list_blobs()]


def test_publisher_client_delivers_to_the_subscriber(twin_factory, subscriber_factory):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory()
    twin.create_subscription("ccr-runs", "tdc-hook", hook.url)
    sent = event(data={"run_id": "run-1", "status": "succeeded"})
    publisher(topic).send([sent])
    wait_for(lambda: hook.notifications)
    (delivered,) = hook.notifications[0]["body"]
    assert delivered["id"] == str(sent.id) and delivered["data"] == {"run_id": "run-1", "status": "succeeded"}
    assert delivered["eventType"] == "CCR.Trainer.Completed" and delivered["subject"] == "runs/run-1"
    assert delivered["topic"].endswith("/topics/ccr-runs")
    headers = hook.notifications[0]["headers"]
    assert headers["aeg-event-type"] == "Notification" and headers["aeg-subscription-name"] == "TDC-HOOK"
    wait_for(lambda: twin.pending_deliveries() == 0)


def test_validation_handshake(twin_factory, subscriber_factory):
    twin = twin_factory()
    twin.create_topic("ccr-runs")
    hook = subscriber_factory()
    twin.create_subscription("ccr-runs", "good-hook", hook.url)
    (validation,) = hook.validations
    assert validation["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert validation["data"]["validationCode"]

    silent = subscriber_factory(validate=False)
    with pytest.raises(SubscriptionValidationFailed, match="did not answer the validation code") as refused:
        twin.create_subscription("ccr-runs", "silent-hook", silent.url + "?code=hook-secret")
    assert "hook-secret" not in str(refused.value)          # a webhook's function key is never echoed
    with pytest.raises(SubscriptionValidationFailed, match="unreachable") as refused:
        twin.create_subscription("ccr-runs", "gone-hook", "http://127.0.0.1:9/api/events?code=hook-secret")
    assert "hook-secret" not in str(refused.value)
    raw = {"id": "e1", "subject": "runs/run-1", "eventType": "CCR.Run.Finished", "eventTime": "2026-01-01T00:00:00Z",
           "data": {}, "dataVersion": "1.0"}
    assert twin.publish("ccr-runs", [raw]) == 1   # only the validated subscription was stored
    wait_for(lambda: hook.notifications)
    assert silent.notifications == []


def test_wrong_or_missing_key_is_401_and_delivers_nothing(twin_factory, subscriber_factory):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory()
    twin.create_subscription("ccr-runs", "tdc-hook", hook.url)
    with pytest.raises(HttpResponseError) as caught:
        publisher(topic, key="d3Jvbmc=").send([event()])
    assert caught.value.status_code == 401
    response = requests.post(topic.endpoint, json=[{"id": "1"}])
    assert response.status_code == 401 and "key" in response.json()["error"]["message"]
    assert twin.pending_deliveries() == 0 and hook.notifications == []


def test_sas_tokens(twin_factory, subscriber_factory):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory()
    twin.create_subscription("ccr-runs", "tdc-hook", hook.url)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    EventGridPublisherClient(topic.endpoint, AzureSasCredential(generate_sas(topic.endpoint, topic.key, later))).send([event()])
    wait_for(lambda: hook.notifications)
    for token in (generate_sas(topic.endpoint, topic.key, datetime.now(timezone.utc) - timedelta(minutes=1)),
                  generate_sas(topic.endpoint, "b3RoZXIga2V5", later),
                  generate_sas(topic.endpoint.replace("ccr-runs", "other"), topic.key, later)):
        with pytest.raises(HttpResponseError) as caught:
            EventGridPublisherClient(topic.endpoint, AzureSasCredential(token)).send([event()])
        assert caught.value.status_code == 401
    assert len(hook.notifications) == 1


def test_filters_by_event_type_and_subject(twin_factory, subscriber_factory):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    completions, run7 = subscriber_factory(), subscriber_factory()
    twin.create_subscription("ccr-runs", "completions", completions.url,
                             event_types=["CCR.Trainer.Completed", "CCR.Trainer.Failed"])
    twin.create_subscription("ccr-runs", "run-seven", run7.url, subject_begins_with="RUNS/run-7")
    publisher(topic).send([event("CCR.Trainer.Completed", "runs/run-1"), event("CCR.Run.Finished", "runs/run-7"),
                           event("ccr.trainer.failed", "runs/run-70")])
    wait_for(lambda: twin.pending_deliveries() == 0 and len(completions.notifications) == 2
             and len(run7.notifications) == 2)
    assert sorted(n["body"][0]["subject"] for n in completions.notifications) == ["runs/run-1", "runs/run-70"]
    assert sorted(n["body"][0]["eventType"] for n in run7.notifications) == ["CCR.Run.Finished", "ccr.trainer.failed"]


def test_retries_until_delivered(twin_factory, subscriber_factory, azurite):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory([500, 503, 200])
    twin.create_subscription("ccr-runs", "flaky", hook.url, dead_letter_container="deadletters-ok")
    sent = event()
    publisher(topic).send([sent])
    wait_for(lambda: len(hook.notifications) == 3 and twin.pending_deliveries() == 0)
    assert {n["body"][0]["id"] for n in hook.notifications} == {str(sent.id)}
    assert [n["headers"]["aeg-delivery-count"] for n in hook.notifications] == ["0", "1", "2"]
    assert dead_letters(azurite, "deadletters-ok") == []


def test_dead_letter_after_the_retry_limit(twin_factory, subscriber_factory, azurite):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory([500])
    twin.create_subscription("ccr-runs", "broken", hook.url, max_delivery_attempts=3,
                             dead_letter_container="deadletters")
    sent = event(data={"run_id": "run-9"})
    publisher(topic).send([sent])
    (name, records) = wait_for(lambda: dead_letters(azurite, "deadletters"))[0]
    assert name.startswith("CCR-RUNS/BROKEN/") and name.endswith(".json")
    (record,) = records
    assert record["id"] == str(sent.id) and record["data"] == {"run_id": "run-9"}
    assert record["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert record["deliveryAttempts"] == 3 and record["lastHttpStatusCode"] == 500
    assert len(hook.notifications) == 3 and twin.pending_deliveries() == 0


def test_bad_request_is_dead_lettered_without_retry(twin_factory, subscriber_factory, azurite):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory([400])
    twin.create_subscription("ccr-runs", "picky", hook.url, dead_letter_container="deadletters-400")
    publisher(topic).send([event()])
    (_, records) = wait_for(lambda: dead_letters(azurite, "deadletters-400"))[0]
    assert records[0]["deadLetterReason"] == "DeliveryFailed" and records[0]["deliveryAttempts"] == 1
    assert len(hook.notifications) == 1


def test_malformed_batches_are_refused(twin_factory, subscriber_factory):
    twin = twin_factory()
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory()
    twin.create_subscription("ccr-runs", "tdc-hook", hook.url)
    headers = {"aeg-sas-key": topic.key, "Content-Type": "application/json"}
    typed = b'[{"id": "1", "subject": "s", "eventType": 7, "eventTime": "t", "data": {}, "dataVersion": "1"}]'
    for body, reason in ((b"not json", "not JSON"), (b"[]", "non-empty"), (b'[{"id": "1"}]', "lacks subject"),
                         (typed, "must be strings")):
        response = requests.post(topic.endpoint, data=body, headers=headers)
        assert response.status_code == 400 and reason in response.json()["error"]["message"]
    with pytest.raises(HttpResponseError) as caught:   # CloudEvents to an Event Grid schema topic
        publisher(topic).send([CloudEvent(source="/ccr", type="t", data={})])
    assert caught.value.status_code == 400
    assert twin.pending_deliveries() == 0 and hook.notifications == []


def test_cloud_events_topic(twin_factory, subscriber_factory):
    twin = twin_factory()
    topic = twin.create_topic("ccr-cloud", input_schema=CLOUD_EVENT_SCHEMA)
    hook = subscriber_factory()
    twin.create_subscription("ccr-cloud", "tdc-hook", hook.url, event_types=["CCR.Run.Finished"])
    assert hook.validations == [{"origin": "eventgrid.azure.net"}]
    sent = CloudEvent(source="/ccr/runs", type="CCR.Run.Finished", subject="runs/run-1", data={"status": "ok"})
    publisher(topic).send([sent, CloudEvent(source="/ccr/runs", type="other", data={})])
    wait_for(lambda: hook.notifications and twin.pending_deliveries() == 0)
    (notification,) = hook.notifications
    assert notification["body"]["id"] == sent.id and notification["body"]["data"] == {"status": "ok"}
    assert notification["headers"]["Content-Type"].startswith("application/cloudevents+json")
    refusing = subscriber_factory(validate=False)
    with pytest.raises(SubscriptionValidationFailed, match="did not allow origin") as refused:
        twin.create_subscription("ccr-cloud", "refusing", refusing.url + "?code=hook-secret")
    assert "hook-secret" not in str(refused.value)


def test_pending_delivery_survives_a_restart(twin_factory, subscriber_factory, tmp_path):
    slow = RetryPolicy(initial_seconds=3600, maximum_seconds=3600, attempts=5)
    twin = twin_factory(retry=slow)
    topic = twin.create_topic("ccr-runs")
    hook = subscriber_factory([503, 200])
    twin.create_subscription("ccr-runs", "tdc-hook", hook.url)
    publisher(topic).send([event()])
    wait_for(lambda: hook.notifications)
    assert twin.pending_deliveries() == 1
    twin.stop()
    again = twin_factory(data_dir=twin.data_dir)
    assert again.create_topic("ccr-runs").key == topic.key     # the topic and its key persisted
    assert (twin.data_dir / "config.json").stat().st_mode & 0o777 == 0o600   # ... readable by the owner only
    wait_for(lambda: len(hook.notifications) == 2 and again.pending_deliveries() == 0)
    assert hook.notifications[0]["body"][0]["id"] == hook.notifications[1]["body"][0]["id"]
