"""Twin of Azure Event Grid custom topics: what EventGridPublisherClient posts to, and the
webhook delivery behind it.

- Topics at `<url>/topics/<name>/api/events`, authenticated by the topic key (`aeg-sas-key`)
  or a SAS token (`aeg-sas-token` / `Authorization: SharedAccessSignature ...`, as
  azure.eventgrid.generate_sas makes it); 401 otherwise. Input schema per topic: the Event
  Grid schema (default) or CloudEvents 1.0.
- Webhook subscriptions with an event-type filter and subject prefix/suffix filters
  (case-insensitive, as Event Grid's defaults). Creating one runs the validation handshake:
  a `Microsoft.EventGrid.SubscriptionValidationEvent` (Event Grid schema) that must be
  answered with `{"validationResponse": <code>}`, or for CloudEvents the HTTP OPTIONS
  abuse-protection handshake (`WebHook-Request-Origin` / `WebHook-Allowed-Origin`).
- At-least-once delivery, one event per request, retried with exponential backoff; 400, 401
  and 413 are not retried. After the last try the event is dead-lettered, when the
  subscription names a container, to `<container>/<TOPIC>/<SUBSCRIPTION>/<y>/<m>/<d>/<h>/<id>.json`
  in Blob Storage, as Event Grid does. Topics, subscriptions and pending deliveries persist.
- A system topic for the twin's storage account (`create_system_topic`): Azurite emits no
  events, so `Microsoft.Storage.BlobCreated` is synthesised by polling the containers its
  subscriptions' `subjectBeginsWith` name (local_emulator/blob_events.py), and delivered like
  any event, e.g. to the Functions host's `/runtime/webhooks/blobs` (blob triggers with
  `source=EventGrid`). Nobody publishes to a system topic.
- Its ARM management plane (event subscriptions created, listed and deleted with
  azure-mgmt-eventgrid) is local_emulator/eventgrid_arm.py, over HTTPS. A subscription made
  there may also be validated by hand: the handshake's `validationUrl` (a GET on this server
  within VALIDATION_URL_SECONDS) activates one whose endpoint did not echo the code; until then
  it is `AwaitingManualAction` and receives nothing.
Event contents are never logged.
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from urllib.parse import quote, unquote

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from local_emulator.blob_events import BlobCreatedSource, container_of_filter
from local_emulator.delivery import DONE, GIVE_UP, RETRY, DeliveryQueue, RetryPolicy
from local_emulator.tls import LoopbackServer, write_private

log = logging.getLogger(__name__)

EVENT_GRID_SCHEMA = "EventGridSchema"
CLOUD_EVENT_SCHEMA = "CloudEventSchemaV1_0"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
RESOURCE_GROUP_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ccr-local"
RESOURCE_PREFIX = RESOURCE_GROUP_ID + "/providers/Microsoft.EventGrid/topics/"
MAX_BATCH_BYTES = 1 << 20
NOT_RETRIED = (400, 401, 413)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]{2,49}$")
_PUBLISH = re.compile(r"^/topics/([A-Za-z0-9\-]+)(?:/api/events)?$")
_VALIDATE = re.compile(r"^/eventsubscriptions/([A-Za-z0-9\-]+)/validate$", re.IGNORECASE)
VALIDATION_URL_SECONDS = 600   # Event Grid: the validation URL is valid for 10 minutes
SUCCEEDED, AWAITING_MANUAL_ACTION = "Succeeded", "AwaitingManualAction"
_EVENT_GRID_FIELDS = ("id", "subject", "eventType", "eventTime", "data", "dataVersion")
_CLOUD_EVENT_FIELDS = ("id", "source", "type", "specversion")


class SubscriptionValidationFailed(RuntimeError):
    """The endpoint did not complete the validation handshake; the subscription was not created."""


@dataclass
class Topic:
    name: str
    key: str
    input_schema: str = EVENT_GRID_SCHEMA
    endpoint: str = ""
    system_source: str = ""   # a system topic: the resource id of the account it carries events of

    @property
    def resource_id(self) -> str:
        return RESOURCE_PREFIX + self.name

    @property
    def event_topic(self) -> str:
        """The `topic` field of its events: the source resource for a system topic."""
        return self.system_source or self.resource_id


@dataclass
class Subscription:
    topic: str
    name: str
    endpoint: str
    event_types: list[str] | None = None
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    max_delivery_attempts: int | None = None
    dead_letter_container: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    provisioning_state: str = SUCCEEDED
    labels: list[str] | None = None
    validation_token: str = ""          # the pending validationUrl's (AwaitingManualAction only)
    validation_expires: float = 0.0

    def matches(self, event_type: str, subject: str) -> bool:
        if self.event_types and event_type.lower() not in {t.lower() for t in self.event_types}:
            return False
        subject = (subject or "").lower()
        return subject.startswith(self.subject_begins_with.lower()) and subject.endswith(self.subject_ends_with.lower())


class EventGridTwin:
    """Topics, subscriptions and their delivery queue: `start()`, `stop()`, `url`, `create_topic()`,
    `create_subscription()`; state persists under `data_dir`."""

    def __init__(self, data_dir: Path, blob_connection: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, retry: RetryPolicy = RetryPolicy(initial_seconds=10, maximum_seconds=600,
                                                                  attempts=30),
                 handshake_timeout: float = 10.0, blob_poll_seconds: float = 1.0, ca_bundle: str | None = None):
        """`ca_bundle`: CA file for HTTPS webhooks (the loopback CA); system CAs otherwise."""
        self.data_dir = Path(data_dir)
        self.ca_bundle = ca_bundle
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.blob_connection, self.retry, self.handshake_timeout = blob_connection, retry, handshake_timeout
        self._server = LoopbackServer(self._route, None, port, host, name="eventgrid-twin")
        self._lock = threading.Lock()
        self._topics: dict[str, Topic] = {}
        self._subscriptions: dict[tuple[str, str], Subscription] = {}
        self._sources: dict[str, BlobCreatedSource] = {}   # system topic -> its event source
        self.blob_poll_seconds = blob_poll_seconds
        self._started = False
        self._load()
        self._queue = DeliveryQueue(self.data_dir / "deliveries", self._deliver, self._dead_letter, retry,
                                    name="eventgrid-delivery")

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> "EventGridTwin":
        self._server.start()
        for topic in self._topics.values():
            topic.endpoint = self.topic_endpoint(topic.name)
        self._queue.start()
        self._started = True
        for topic in self._topics.values():
            if topic.system_source:
                self._source(topic).start()
        return self

    def stop(self) -> None:
        self._started = False
        for source in self._sources.values():
            source.stop()
        self._sources.clear()
        self._queue.stop()
        self._server.stop()

    def pending_deliveries(self) -> int:
        return self._queue.pending()

    # --- topics and subscriptions ------------------------------------------------------

    def topic_endpoint(self, name: str) -> str:
        return f"{self.url}/topics/{name}/api/events"

    def create_topic(self, name: str, input_schema: str = EVENT_GRID_SCHEMA) -> Topic:
        """The topic (created with a fresh base64 key if new); `.endpoint` and `.key` are
        what EventGridPublisherClient needs."""
        if not _NAME.match(name):
            raise ValueError("topic names are 3-50 letters, digits and '-'")
        if input_schema not in (EVENT_GRID_SCHEMA, CLOUD_EVENT_SCHEMA):
            raise ValueError(f"input schema must be {EVENT_GRID_SCHEMA} or {CLOUD_EVENT_SCHEMA}")
        with self._lock:
            topic = self._topics.get(name)
            if topic is None:
                topic = Topic(name, base64.b64encode(secrets.token_bytes(32)).decode(), input_schema)
                self._topics[name] = topic
                self._save()
        topic.endpoint = self.topic_endpoint(name)
        return topic

    def create_system_topic(self, name: str) -> Topic:
        """The system topic of the twin's storage account (`blob_connection`): BlobCreated
        events, polled from the containers its subscriptions watch."""
        if not self.blob_connection:
            raise ValueError("a storage system topic needs the twin's blob_connection")
        if not _NAME.match(name):
            raise ValueError("topic names are 3-50 letters, digits and '-'")
        fields = dict(part.split("=", 1) for part in self.blob_connection.split(";") if "=" in part)
        source = f"{RESOURCE_GROUP_ID}/providers/Microsoft.Storage/storageAccounts/{fields['AccountName']}"
        with self._lock:
            topic = self._topics.get(name)
            if topic is None:
                topic = Topic(name, "", EVENT_GRID_SCHEMA, system_source=source)
                self._topics[name] = topic
                self._save()
        if not topic.system_source:
            raise ValueError(f"{name} is a custom topic")
        if self._started and name not in self._sources:
            self._source(topic).start()
        return topic

    def _source(self, topic: Topic) -> BlobCreatedSource:
        if topic.name not in self._sources:
            self._sources[topic.name] = BlobCreatedSource(
                self.data_dir / "system-topics" / f"{topic.name}.json", self.blob_connection, topic.system_source,
                lambda events: self.publish(topic.name, events), poll_seconds=self.blob_poll_seconds)
        return self._sources[topic.name]

    def topic(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def subscriptions(self, topic: str) -> list[Subscription]:
        with self._lock:
            return [s for s in self._subscriptions.values() if s.topic == topic]

    def subscription(self, topic: str, name: str) -> Subscription | None:
        """The subscription, names compared case-insensitively as Azure does."""
        with self._lock:
            return next((s for (t, n), s in self._subscriptions.items()
                         if t == topic and n.lower() == name.lower()), None)

    def create_subscription(self, topic: str, name: str, endpoint: str, event_types: list[str] | None = None,
                            subject_begins_with: str = "", subject_ends_with: str = "",
                            max_delivery_attempts: int | None = None,
                            dead_letter_container: str | None = None, labels: list[str] | None = None,
                            allow_manual_validation: bool = False) -> Subscription:
        """Validate the endpoint (handshake), then store the subscription. With
        `allow_manual_validation` an endpoint that answers 200 without the code leaves it
        AwaitingManualAction until its validationUrl is fetched."""
        if topic not in self._topics:
            raise KeyError(f"no topic {topic}")
        if not _NAME.match(name):
            raise ValueError("subscription names are 3-50 letters, digits and '-'")
        if dead_letter_container and not self.blob_connection:
            raise ValueError("dead-lettering needs the twin's blob_connection")
        subscription = Subscription(topic, name, endpoint, event_types, subject_begins_with, subject_ends_with,
                                    max_delivery_attempts, dead_letter_container, labels=labels)
        self._handshake(self._topics[topic], subscription, allow_manual_validation)
        if self._topics[topic].system_source:
            # the baseline of what exists now and the subscription are one step: no blob falls between
            source = self._source(self._topics[topic])
            with source.lock:
                container = container_of_filter(subject_begins_with)
                source.watch(container) if container else source.watch_all()
                self._store(subscription)
        else:
            self._store(subscription)
        return subscription

    def _store(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions[(subscription.topic, subscription.name)] = subscription
            self._save()

    def delete_subscription(self, topic: str, name: str) -> None:
        with self._lock:
            self._subscriptions.pop((topic, name), None)
            self._save()

    def validate_manually(self, name: str, subscription_id: str, token: str) -> bool:
        """A GET of the validationUrl: activates the subscription it names, once, in time."""
        with self._lock:
            found = next((s for s in self._subscriptions.values()
                          if s.name.lower() == name.lower() and s.id == subscription_id), None)
            if found is None or found.provisioning_state != AWAITING_MANUAL_ACTION or not found.validation_token \
                    or not hmac.compare_digest(found.validation_token.encode(), token.encode()) \
                    or time.time() > found.validation_expires:
                return False
            found.provisioning_state, found.validation_token, found.validation_expires = SUCCEEDED, "", 0.0
            self._save()
        return True

    def _handshake(self, topic: Topic, subscription: Subscription, allow_manual: bool = False) -> None:
        try:
            if topic.input_schema == CLOUD_EVENT_SCHEMA:
                origin = "eventgrid.azure.net"
                response = requests.options(subscription.endpoint, timeout=self.handshake_timeout,
                                            verify=self.ca_bundle or True,
                                            headers={"WebHook-Request-Origin": origin})
                if response.status_code != 200 or response.headers.get("WebHook-Allowed-Origin") not in (origin, "*"):
                    raise SubscriptionValidationFailed(f"{_without_query(subscription.endpoint)} did not allow origin "
                                                       f"{origin} (HTTP {response.status_code})")
                return
            code = str(uuid.uuid4()).upper()
            token = secrets.token_urlsafe(24)
            validation_url = (f"{self.url}/eventsubscriptions/{subscription.name}/validate?id={subscription.id}"
                              f"&t={quote(_now_iso())}&apiVersion=2025-02-15&token={token}")
            event = {"id": str(uuid.uuid4()), "topic": topic.event_topic, "subject": "",
                     "data": {"validationCode": code, "validationUrl": validation_url},
                     "eventType": VALIDATION_EVENT,
                     "eventTime": _now_iso(), "metadataVersion": "1", "dataVersion": "2"}
            response = requests.post(subscription.endpoint, json=[event], timeout=self.handshake_timeout,
                                     verify=self.ca_bundle or True,
                                     headers={"aeg-event-type": "SubscriptionValidation",
                                              "aeg-subscription-name": subscription.name.upper()})
        except requests.RequestException as problem:
            raise SubscriptionValidationFailed(
                f"{_without_query(subscription.endpoint)} unreachable for validation ({type(problem).__name__})") from None
        try:
            answered = response.json().get("validationResponse")
        except (ValueError, AttributeError):
            answered = None
        if allow_manual and response.status_code == 200 and answered is None:
            subscription.provisioning_state = AWAITING_MANUAL_ACTION
            subscription.validation_token, subscription.validation_expires = token, time.time() + VALIDATION_URL_SECONDS
            return
        if response.status_code != 200 or answered != code:
            raise SubscriptionValidationFailed(
                f"{_without_query(subscription.endpoint)} did not answer the validation code (HTTP {response.status_code})")

    def _load(self) -> None:
        path = self.data_dir / "config.json"
        if path.exists():
            config = json.loads(path.read_text())
            self._topics = {t["name"]: Topic(**t) for t in config["topics"]}
            self._subscriptions = {(s["topic"], s["name"]): Subscription(**s) for s in config["subscriptions"]}

    def _save(self) -> None:
        # topic keys are the twin's own secrets: the file is the owner's only
        write_private(self.data_dir / "config.json",
                      json.dumps({"topics": [asdict(t) for t in self._topics.values()],
                                  "subscriptions": [asdict(s) for s in self._subscriptions.values()]}).encode())

    # --- publishing -------------------------------------------------------------------

    def _route(self, method, path, query, headers, body):
        validate = _VALIDATE.match(path)
        if validate and method == "GET":
            if self.validate_manually(validate.group(1), query.get("id", ""), query.get("token", "")):
                return 200, {"message": "Webhook successfully validated as a result of user's validation action."}, {}
            return 400, {"error": {"code": "BadRequest", "message": "invalid or expired validation request"}}, {}
        match = _PUBLISH.match(path)
        if method != "POST" or not match:
            return 404, {"error": {"code": "NotFound", "message": "no such endpoint"}}, {}
        topic = self._topics.get(match.group(1))
        if topic is None or topic.system_source:   # a system topic has no publishing endpoint
            return 404, {"error": {"code": "NotFound", "message": "no such topic"}}, {}
        if not self._authorized(topic, headers):
            return 401, {"error": {"code": "Unauthorized", "message": "missing or invalid topic key or SAS token"}}, {}
        if len(body) > MAX_BATCH_BYTES:
            return 413, {"error": {"code": "PayloadTooLarge", "message": "batch over 1 MB"}}, {}
        try:
            events = self._parse(topic, headers.get("Content-Type") or "", body)
        except ValueError as problem:
            return 400, {"error": {"code": "BadRequest", "message": str(problem)}}, {}
        self.publish(topic.name, events)
        return 200, None, {}

    def publish(self, topic_name: str, events: list[dict]) -> int:
        """Queue each event for every matching subscription; returns the number of deliveries."""
        topic = self._topics[topic_name]
        queued = 0
        for event in events:
            cloud = topic.input_schema == CLOUD_EVENT_SCHEMA
            if not cloud:
                event = {**event, "topic": topic.event_topic, "metadataVersion": "1"}
            event_type, subject = (event.get("type"), event.get("subject")) if cloud else (event["eventType"], event["subject"])
            for subscription in list(self._subscriptions.values()):
                if subscription.topic == topic_name and subscription.provisioning_state == SUCCEEDED \
                        and subscription.matches(event_type, subject):
                    self._queue.add({"topic": topic_name, "subscription": subscription.name, "event": event,
                                     "max_attempts": subscription.max_delivery_attempts,
                                     "published": _now_iso()})
                    queued += 1
        return queued

    def _authorized(self, topic: Topic, headers) -> bool:
        key = headers.get("aeg-sas-key")
        if key is not None:
            return hmac.compare_digest(key.encode(), topic.key.encode())
        token = headers.get("aeg-sas-token")
        authorization = headers.get("Authorization") or ""
        if token is None and authorization.startswith("SharedAccessSignature "):
            token = authorization[len("SharedAccessSignature "):]
        return token is not None and _valid_sas(token, topic)

    def _parse(self, topic: Topic, content_type: str, body: bytes) -> list[dict]:
        cloud = content_type.startswith("application/cloudevents")
        if cloud != (topic.input_schema == CLOUD_EVENT_SCHEMA):
            raise ValueError(f"this topic accepts the {topic.input_schema} only")
        try:
            events = json.loads(body)
        except ValueError:
            raise ValueError("body is not JSON") from None
        if isinstance(events, dict) and cloud:
            events = [events]
        if not isinstance(events, list) or not events:
            raise ValueError("body must be a non-empty JSON array of events")
        required = _CLOUD_EVENT_FIELDS if cloud else _EVENT_GRID_FIELDS
        filtered_on = ("type", "subject") if cloud else ("eventType", "subject")
        for event in events:
            missing = [name for name in required if not isinstance(event, dict) or name not in event]
            if missing:
                raise ValueError(f"an event lacks {', '.join(missing)}")
            if any(not isinstance(event.get(name, ""), str) for name in filtered_on):
                raise ValueError(f"an event's {' and '.join(filtered_on)} must be strings")
        return events

    # --- delivery ---------------------------------------------------------------------

    def _deliver(self, job: dict) -> str:
        subscription = self._subscriptions.get((job["topic"], job["subscription"]))
        if subscription is None:          # deleted since: nothing to deliver to
            return DONE
        cloud = self._topics[job["topic"]].input_schema == CLOUD_EVENT_SCHEMA
        headers = {"aeg-event-type": "Notification", "aeg-subscription-name": subscription.name.upper(),
                   "aeg-delivery-count": str(job["attempts"]), "aeg-metadata-version": "1"}
        if cloud:
            headers["Content-Type"] = "application/cloudevents+json; charset=utf-8"
            body = json.dumps(job["event"])
        else:
            headers["Content-Type"] = "application/json; charset=utf-8"
            headers["aeg-data-version"] = str(job["event"].get("dataVersion", ""))
            body = json.dumps([job["event"]])
        job["last_attempt"] = _now_iso()
        try:
            status = requests.post(subscription.endpoint, data=body.encode(), headers=headers,
                                   timeout=self.retry.timeout_seconds, verify=self.ca_bundle or True).status_code
        except requests.RequestException as problem:
            job["last_status"], job["last_outcome"] = None, type(problem).__name__
            return RETRY
        job["last_status"] = status
        if 200 <= status <= 204:
            return DONE
        job["last_outcome"] = "GenericError" if status not in NOT_RETRIED else "NonRetriableError"
        return GIVE_UP if status in NOT_RETRIED else RETRY

    def _dead_letter(self, job: dict) -> None:
        subscription = self._subscriptions.get((job["topic"], job["subscription"]))
        if subscription is None or not subscription.dead_letter_container:
            log.warning("event for %s/%s dropped after %d attempts (no dead-letter container)",
                        job["topic"], job["subscription"], job["attempts"])
            return
        reason = "DeliveryFailed" if job.get("last_status") in NOT_RETRIED else "MaxDeliveryAttemptsExceeded"
        record = {**job["event"], "deadLetterReason": reason, "deliveryAttempts": job["attempts"],
                  "lastDeliveryOutcome": job.get("last_outcome"), "lastHttpStatusCode": job.get("last_status"),
                  "publishTime": job["published"], "lastDeliveryAttemptTime": job.get("last_attempt")}
        now = datetime.now(timezone.utc)
        name = (f"{job['topic'].upper()}/{job['subscription'].upper()}/"
                f"{now:%Y/%m/%d/%H}/{uuid.uuid4()}.json")
        with BlobServiceClient.from_connection_string(self.blob_connection) as service:
            container = service.get_container_client(subscription.dead_letter_container)
            try:
                container.create_container()
            except ResourceExistsError:
                pass
            container.upload_blob(name, json.dumps([record]).encode(), overwrite=True)
        log.info("event for %s/%s dead-lettered after %d attempts", job["topic"], job["subscription"],
                 job["attempts"])


def _valid_sas(token: str, topic: Topic) -> bool:
    """`r=<resource>&e=<expiry>&s=<signature>` signed with the topic key (HMAC-SHA256), unexpired,
    for this topic's endpoint."""
    unsigned, sep, signature = token.rpartition("&s=")
    if not (unsigned.isascii() and signature.isascii()):
        return False
    fields = dict(part.split("=", 1) for part in unsigned.split("&") if "=" in part)
    if not sep or "r" not in fields or "e" not in fields:
        return False
    expected = base64.b64encode(hmac.new(base64.b64decode(topic.key), unsigned.encode("ascii"), sha256).digest())
    if not hmac.compare_digest(quote(expected, safe="").encode(), signature.encode()):
        return False
    try:
        expiry = datetime.fromisoformat(unquote(fields["e"]))
    except ValueError:
        return False
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=timezone.utc)
    resource = unquote(fields["r"]).split("?", 1)[0].rstrip("/")
    return expiry > datetime.now(timezone.utc) and resource == topic.endpoint.rstrip("/")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _without_query(url: str) -> str:
    """Webhook URLs may carry a key in their query string (`code=`): never in a message."""
    return url.split("?", 1)[0]
