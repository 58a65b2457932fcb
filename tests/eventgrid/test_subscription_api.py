"""The Event Grid twin's management plane driven by azure-mgmt-eventgrid itself: event
subscriptions created (with the validation handshake), read, listed and deleted on a custom
topic and on the storage system topic; the filters and the twin's retries apply to what it
delivers; what the twin does not implement is refused, never ignored."""
from __future__ import annotations

import json
import threading

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient
from azure.core.credentials import AzureKeyCredential
from azure.mgmt.eventgrid import EventGridManagementClient
from azure.mgmt.eventgrid.models import (EventSubscription, EventSubscriptionFilter, RetryPolicy as ArmRetryPolicy,
                                         StorageQueueEventSubscriptionDestination, WebHookEventSubscriptionDestination)

from local_emulator.eventgrid_arm import EventGridManagement, topic_arm_id
from local_emulator.stack import wait_for
from local_emulator.tls import LoopbackServer
from shared.credentials import StaticTokenCredential

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


class HttpsHook:
    """A webhook over loopback TLS: answers the handshake (echoing the code, or not when
    `manual`), records notifications, answers `statuses` in turn (the last repeats)."""

    def __init__(self, tls, statuses=(200,), manual=False):
        self.statuses, self.manual = list(statuses), manual
        self.validations, self.notifications = [], []
        self._lock = threading.Lock()
        self.server = LoopbackServer(self._route, tls.server_context(), name="hook").start()

    @property
    def url(self) -> str:
        return f"{self.server.url}/hook?code=hook-secret"

    def _route(self, method, path, query, headers, body):
        events = json.loads(body or b"[]")
        if headers.get("aeg-event-type") == "SubscriptionValidation":
            self.validations.append(events[0])
            return 200, ({} if self.manual else {"validationResponse": events[0]["data"]["validationCode"]}), {}
        with self._lock:
            self.notifications.append(events[0])
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return status, None, {}


@pytest.fixture
def management(twin_factory, tls, token):
    twin = twin_factory(ca_bundle=str(tls.ca_path))
    server = EventGridManagement(twin, tls.server_context(), token).start()
    client = EventGridManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=server.url,
                                       connection_verify=str(tls.ca_path), polling_interval=0.1)
    yield twin, server, client
    client.close()
    server.stop()


@pytest.fixture
def hooks(tls):
    made = []

    def make(**options) -> HttpsHook:
        made.append(HttpsHook(tls, **options))
        return made[-1]
    yield make
    for hook in made:
        hook.server.stop()


def webhook(url: str) -> EventSubscription:
    return EventSubscription(destination=WebHookEventSubscriptionDestination(endpoint_url=url))


def send(topic, *events) -> None:
    EventGridPublisherClient(topic.endpoint, AzureKeyCredential(topic.key)).send(
        [EventGridEvent(subject=subject, event_type=event_type, data={"n": i}, data_version="1.0")
         for i, (event_type, subject) in enumerate(events)])


def test_the_sdk_creates_lists_reads_and_deletes_a_webhook_subscription(management, hooks):
    twin, _, client = management
    topic = twin.create_topic("ccr-events")
    scope = topic_arm_id(topic)
    hook = hooks()
    info = EventSubscription(
        destination=WebHookEventSubscriptionDestination(endpoint_url=hook.url),
        filter=EventSubscriptionFilter(included_event_types=["CCR.Run.Finished"], subject_begins_with="/parties/a/",
                                       subject_ends_with="-x"),
        retry_policy=ArmRetryPolicy(max_delivery_attempts=5), labels=["party"])
    created = client.event_subscriptions.begin_create_or_update(scope, "party-a", info).result()
    assert created.provisioning_state == "Succeeded" and created.name == "party-a"
    assert created.filter.subject_begins_with == "/parties/a/" and created.filter.included_event_types == ["CCR.Run.Finished"]
    assert created.destination.endpoint_base_url == hook.url.split("?")[0]
    assert created.destination.endpoint_url is None           # the key in the query never comes back on a GET
    (validation,) = hook.validations
    assert validation["data"]["validationCode"] and validation["data"]["validationUrl"].startswith(twin.url)

    listed = [s.name for s in client.event_subscriptions.list_by_resource("ccr-local", "Microsoft.EventGrid", "topics",
                                                                          "ccr-events")]
    assert listed == ["party-a"]
    assert [s.name for s in client.topic_event_subscriptions.list("ccr-local", "ccr-events")] == ["party-a"]
    assert client.topic_event_subscriptions.get("ccr-local", "ccr-events", "party-a").labels == ["party"]
    assert client.event_subscriptions.get_full_url(scope, "party-a").endpoint_url == hook.url

    send(topic, ("CCR.Run.Finished", "/parties/a/runs/run-x"), ("CCR.Run.Finished", "/parties/b/runs/run-x"),
         ("CCR.Trainer.Completed", "/parties/a/runs/run-x"), ("CCR.Run.Finished", "/parties/a/runs/run-y"))
    wait_for(lambda: hook.notifications, 10, what="the matching event")
    assert [e["subject"] for e in hook.notifications] == ["/parties/a/runs/run-x"]

    client.event_subscriptions.begin_delete(scope, "party-a").result()
    with pytest.raises(ResourceNotFoundError):
        client.event_subscriptions.get(scope, "party-a")
    assert list(client.topic_event_subscriptions.list("ccr-local", "ccr-events")) == []
    client.event_subscriptions.begin_delete(scope, "party-a").result()   # deleting again is no error


def test_a_failed_handshake_fails_the_operation_and_stores_nothing(management, tls):
    twin, _, client = management
    scope = topic_arm_id(twin.create_topic("ccr-events"))
    silent = LoopbackServer(lambda *_: (500, None, {}), tls.server_context(), name="silent").start()
    try:
        with pytest.raises(HttpResponseError, match="validation handshake failed") as failed:
            client.event_subscriptions.begin_create_or_update(scope, "bad", webhook(silent.url + "/h?code=s3")).result()
        assert "s3" not in str(failed.value)
    finally:
        silent.stop()
    assert twin.subscriptions("ccr-events") == []


def test_manual_validation_through_the_validation_url(management, hooks):
    twin, _, client = management
    topic = twin.create_topic("ccr-events")
    hook = hooks(manual=True)
    created = client.event_subscriptions.begin_create_or_update(topic_arm_id(topic), "manual", webhook(hook.url)).result()
    assert created.provisioning_state == "AwaitingManualAction"
    send(topic, ("CCR.Run.Finished", "runs/1"))
    url = hook.validations[0]["data"]["validationUrl"]
    assert requests.get(url.replace("token=", "token=x"), timeout=10).status_code == 400
    assert requests.get(url, timeout=10).status_code == 200
    assert requests.get(url, timeout=10).status_code == 400           # once
    assert client.event_subscriptions.get(topic_arm_id(topic), "manual").provisioning_state == "Succeeded"
    send(topic, ("CCR.Run.Finished", "runs/2"))
    wait_for(lambda: hook.notifications, 10, what="delivery once validated")
    assert [e["subject"] for e in hook.notifications] == ["runs/2"]   # nothing before validation


def test_delivery_to_a_subscription_made_through_arm_is_retried(management, hooks):
    twin, _, client = management
    topic = twin.create_topic("ccr-events")
    hook = hooks(statuses=(503, 500, 200))
    client.event_subscriptions.begin_create_or_update(topic_arm_id(topic), "flaky", webhook(hook.url)).result()
    send(topic, ("CCR.Run.Finished", "runs/1"))
    wait_for(lambda: len(hook.notifications) == 3, 10, what="three attempts")


def test_system_topic_subscriptions_through_the_sdk(management, hooks):
    twin, _, client = management
    twin.create_system_topic("ccr-storage")
    hook = hooks()
    info = EventSubscription(destination=WebHookEventSubscriptionDestination(endpoint_url=hook.url),
                             filter=EventSubscriptionFilter(
                                 included_event_types=["Microsoft.Storage.BlobCreated"],
                                 subject_begins_with="/blobServices/default/containers/inbox/"))
    created = client.system_topic_event_subscriptions.begin_create_or_update("ccr-local", "ccr-storage", "inbox",
                                                                             info).result()
    assert created.provisioning_state == "Succeeded"
    assert [s.name for s in client.system_topic_event_subscriptions.list_by_system_topic("ccr-local", "ccr-storage")] \
        == ["inbox"]
    client.system_topic_event_subscriptions.begin_delete("ccr-local", "ccr-storage", "inbox").result()
    assert twin.subscriptions("ccr-storage") == []


@pytest.mark.parametrize("info, message", [
    (lambda url: webhook(url.replace("https://", "http://")), "must be https"),
    (lambda url: EventSubscription(destination=StorageQueueEventSubscriptionDestination(
        resource_id="/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z", queue_name="q")),
     "only WebHook"),
    (lambda url: EventSubscription(destination=WebHookEventSubscriptionDestination(endpoint_url=url),
                                   filter=EventSubscriptionFilter(is_subject_case_sensitive=True)), "case-sensitive"),
    (lambda url: EventSubscription(destination=WebHookEventSubscriptionDestination(endpoint_url=url,
                                                                                   max_events_per_batch=10)),
     "one event per request"),
])
def test_what_the_twin_does_not_implement_is_refused(management, hooks, info, message):
    twin, _, client = management
    scope = topic_arm_id(twin.create_topic("ccr-events"))
    with pytest.raises(HttpResponseError, match=message) as refused:
        client.event_subscriptions.begin_create_or_update(scope, "refused", info(hooks().url)).result()
    assert refused.value.status_code == 400
    assert twin.subscriptions("ccr-events") == []


def test_the_management_plane_needs_the_bearer_token(management, tls):
    twin, server, _ = management
    scope = topic_arm_id(twin.create_topic("ccr-events"))
    url = f"{server.url}{scope}/providers/Microsoft.EventGrid/eventSubscriptions?api-version=2025-02-15"
    assert requests.get(url, verify=str(tls.ca_path), timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, verify=str(tls.ca_path),
                        timeout=10).status_code == 401
