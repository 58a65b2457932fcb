"""Twin of the Event Grid management plane (ARM) for event subscriptions on the Event Grid
twin's topics: what `azure-mgmt-eventgrid` 10.4.0 (api-version 2025-02-15) calls to create,
read, list and delete them.

Serves, over HTTPS on loopback with a required Bearer token (ARM clients refuse tokens over
plain http), both URL shapes the SDK uses:
- extension resources: `<topic id>/providers/Microsoft.EventGrid/eventSubscriptions[/<name>]`
  (`event_subscriptions.begin_create_or_update(scope=<topic id>, ...)`, `get`, `begin_delete`,
  `get_full_url`, `list_by_resource`);
- nested: `.../topics/<topic>/eventSubscriptions[/<name>]` (`topic_event_subscriptions`) and
  `.../systemTopics/<topic>/eventSubscriptions[/<name>]` (`system_topic_event_subscriptions`).
PUT is long-running as Event Grid answers it: 201 with `provisioningState: Creating` and an
`Azure-AsyncOperation` URL whose status becomes Succeeded (or Failed with the validation
handshake's error), then the SDK reads the resource. DELETE is 202 with `Azure-AsyncOperation`
and `Location`. What the twin cannot honour is refused with 400 rather than silently ignored:
destinations other than WebHook, Azure AD-protected webhooks, batching, advanced filters,
case-sensitive subject filters, expiry, delivery identities, a delivery schema other than the
topic's. A webhook endpoint must be https (as in Azure); a GET never returns the full endpoint
URL (it may carry a key): `endpointBaseUrl` only, the full one through `getFullUrl`.
"""
from __future__ import annotations

import json
import re
import ssl
import threading
import uuid

from local_emulator.eventgrid import (AWAITING_MANUAL_ACTION, CLOUD_EVENT_SCHEMA, EVENT_GRID_SCHEMA,
                                      SubscriptionValidationFailed, EventGridTwin, Subscription, Topic,
                                      _without_query)
from local_emulator.tls import LoopbackServer, bearer_matches

API_VERSION = "2025-02-15"
PROVIDER = "providers/Microsoft.EventGrid"
RESOURCE_TYPE = "Microsoft.EventGrid/eventSubscriptions"
RETRY_AFTER_SECONDS = "0.1"   # the SDK's poller honours fractional Retry-After
MAX_ATTEMPTS = 30
_N = r"[^/]+"
_TOPIC = rf"/subscriptions/(?P<sub>{_N})/resourceGroups/(?P<rg>{_N})/{PROVIDER}/(?P<kind>topics|systemTopics)/(?P<topic>{_N})"
_ROUTES = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in (
    ("item", rf"^{_TOPIC}/{PROVIDER}/eventSubscriptions/(?P<name>{_N})$"),
    ("item", rf"^{_TOPIC}/eventSubscriptions/(?P<name>{_N})$"),
    ("full_url", rf"^{_TOPIC}/{PROVIDER}/eventSubscriptions/(?P<name>{_N})/getFullUrl$"),
    ("full_url", rf"^{_TOPIC}/eventSubscriptions/(?P<name>{_N})/getFullUrl$"),
    ("list", rf"^{_TOPIC}/{PROVIDER}/eventSubscriptions$"),
    ("list", rf"^{_TOPIC}/eventSubscriptions$"),
    ("operation", rf"^/subscriptions/(?P<sub>{_N})/{PROVIDER}/locations/(?P<loc>{_N})/operationsStatus/(?P<op>{_N})$"),
    ("result", rf"^/subscriptions/(?P<sub>{_N})/{PROVIDER}/locations/(?P<loc>{_N})/operationResults/(?P<op>{_N})$"),
)]
_SUPPORTED_FILTER = {"includedEventTypes", "subjectBeginsWith", "subjectEndsWith", "isSubjectCaseSensitive",
                     "advancedFilters", "enableAdvancedFilteringOnArrays"}
_SUPPORTED_PROPERTIES = {"destination", "filter", "labels", "eventDeliverySchema", "retryPolicy",
                         "deadLetterDestination", "topic", "provisioningState"}


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


class EventGridManagement:
    """The management endpoint of one EventGridTwin: `start()`, `stop()`, `url`."""

    def __init__(self, twin: EventGridTwin, ssl_context: ssl.SSLContext, access_token: str, port: int = 0):
        if not access_token:
            raise ValueError("the Event Grid management twin needs the access token it will require from callers")
        self.twin, self._access_token = twin, access_token
        self._operations: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._route, ssl_context, port=port, name="Event Grid management twin")

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> "EventGridManagement":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    # --- requests -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict, headers, body: bytes):
        if not bearer_matches(headers.get("Authorization"), self._access_token):
            return 401, {"error": {"code": "AuthenticationFailed", "message": "a valid Bearer token is required"}}, {
                "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                                    'error="invalid_token"'}
        try:
            return self._handle(method, path, query, body)
        except ArmError as error:
            return error.status, {"error": {"code": error.code, "message": str(error)}}, {}

    def _handle(self, method: str, path: str, query: dict, body: bytes):
        for route, pattern in _ROUTES:
            match = pattern.match(path)
            if match:
                break
        else:
            raise ArmError(404, "InvalidResourceType", "no such resource type")
        if not query.get("api-version"):
            raise ArmError(400, "MissingApiVersionParameter", "the api-version query parameter is required")
        args = match.groupdict()
        if route == "operation" and method == "GET":
            return self._operation_status(args["op"])
        if route == "result" and method == "GET":
            return self._operation_result(args["op"])
        topic = self._topic(args)
        if route == "list" and method == "GET":
            return 200, {"value": [self._view(topic, s) for s in self.twin.subscriptions(topic.name)]}, {}
        subscription = self.twin.subscription(topic.name, args["name"])
        if route == "full_url" and method == "POST":
            if subscription is None:
                raise ArmError(404, "ResourceNotFound", f"event subscription {args['name']} not found")
            return 200, {"endpointUrl": subscription.endpoint}, {}
        if route == "item":
            if method == "GET":
                if subscription is None:
                    raise ArmError(404, "ResourceNotFound", f"event subscription {args['name']} not found")
                return 200, self._view(topic, subscription), {}
            if method == "PUT":
                return self._create(topic, args, subscription, body)
            if method == "DELETE":
                return self._delete(topic, args, subscription)
        raise ArmError(405, "MethodNotAllowed", f"{method} is not supported on this resource")

    def _topic(self, args: dict) -> Topic:
        topic = self.twin.topic(args["topic"])
        system = args["kind"].lower() == "systemtopics"
        if topic is None or bool(topic.system_source) != system or args["rg"].lower() != _resource_group(topic):
            raise ArmError(404, "ResourceNotFound", f"{args['kind']} {args['topic']} not found")
        return topic

    # --- create, delete, operations ------------------------------------------------------------

    def _create(self, topic: Topic, args: dict, existing: Subscription | None, raw: bytes):
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ArmError(400, "InvalidRequestContent", "the request body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise ArmError(400, "InvalidRequestContent", "the request body must carry properties")
        spec = _subscription_spec(body["properties"], topic, existing)
        name = existing.name if existing else args["name"]
        location = "local"
        operation = uuid.uuid4().hex
        try:
            self.twin.create_subscription(topic.name, name, allow_manual_validation=True, **spec)
            self._operations[operation] = {"status": "Succeeded"}
        except SubscriptionValidationFailed as failed:
            self._operations[operation] = {"status": "Failed", "error": {
                "code": "Url validation", "message": f"Webhook validation handshake failed for {failed}"}}
        except ValueError as problem:
            raise ArmError(400, "BadRequest", str(problem)) from None
        view = _arm_view(topic, Subscription(topic.name, name, spec["endpoint"], spec["event_types"],
                                             spec["subject_begins_with"], spec["subject_ends_with"],
                                             spec["max_delivery_attempts"], spec["dead_letter_container"],
                                             provisioning_state="Creating", labels=spec["labels"]))
        return (200 if existing else 201), view, self._async_headers(args["sub"], location, operation)

    def _delete(self, topic: Topic, args: dict, existing: Subscription | None):
        if existing is None:
            return 204, None, {}
        self.twin.delete_subscription(topic.name, existing.name)
        operation = uuid.uuid4().hex
        self._operations[operation] = {"status": "Succeeded"}
        headers = self._async_headers(args["sub"], "local", operation)
        headers["Location"] = f"{self.url}/subscriptions/{args['sub']}/{PROVIDER}/locations/local/" \
                              f"operationResults/{operation}?api-version={API_VERSION}"
        return 202, None, headers

    def _async_headers(self, sub: str, location: str, operation: str) -> dict:
        return {"Azure-AsyncOperation": f"{self.url}/subscriptions/{sub}/{PROVIDER}/locations/{location}/"
                                        f"operationsStatus/{operation}?api-version={API_VERSION}",
                "Retry-After": RETRY_AFTER_SECONDS}

    def _operation_status(self, operation: str):
        state = self._operations.get(operation)
        if state is None:
            raise ArmError(404, "OperationNotFound", "no such operation")
        return 200, {"id": operation, "name": operation, **state}, {}

    def _operation_result(self, operation: str):
        if operation not in self._operations:
            raise ArmError(404, "OperationNotFound", "no such operation")
        return 204, None, {}

    def _view(self, topic: Topic, subscription: Subscription) -> dict:
        return _arm_view(topic, subscription)


def _resource_group(topic: Topic) -> str:
    return topic.resource_id.split("/resourceGroups/", 1)[1].split("/", 1)[0].lower()


def topic_arm_id(topic: Topic) -> str:
    """The topic's ARM id: `.../topics/<name>`, or `.../systemTopics/<name>` for a system topic."""
    if topic.system_source:
        return topic.resource_id.replace("/topics/", "/systemTopics/")
    return topic.resource_id


def _arm_view(topic: Topic, subscription: Subscription) -> dict:
    scope = topic_arm_id(topic)
    properties = {
        "topic": topic.event_topic,
        "provisioningState": subscription.provisioning_state,
        "destination": {"endpointType": "WebHook", "properties": {
            "endpointUrl": None, "endpointBaseUrl": _without_query(subscription.endpoint),
            "maxEventsPerBatch": 1, "preferredBatchSizeInKilobytes": 64, "minimumTlsVersionAllowed": "1.2"}},
        "filter": {"includedEventTypes": subscription.event_types,
                   "subjectBeginsWith": subscription.subject_begins_with,
                   "subjectEndsWith": subscription.subject_ends_with,
                   "isSubjectCaseSensitive": False, "enableAdvancedFilteringOnArrays": False,
                   "advancedFilters": []},
        "labels": subscription.labels or [],
        "eventDeliverySchema": topic.input_schema,
        "retryPolicy": {"maxDeliveryAttempts": subscription.max_delivery_attempts or MAX_ATTEMPTS,
                        "eventTimeToLiveInMinutes": 1440},
    }
    if subscription.dead_letter_container:
        properties["deadLetterDestination"] = {"endpointType": "StorageBlob", "properties": {
            "blobContainerName": subscription.dead_letter_container}}
    nested = "/eventSubscriptions/" if topic.system_source else f"/{PROVIDER}/eventSubscriptions/"
    return {"id": scope + nested + subscription.name, "name": subscription.name,
            "type": "Microsoft.EventGrid/systemTopics/eventSubscriptions" if topic.system_source else RESOURCE_TYPE,
            "properties": properties}


def _subscription_spec(properties: dict, topic: Topic, existing: Subscription | None) -> dict:
    """The PUT's properties as create_subscription's arguments; ArmError for what the twin
    does not implement (never silently ignored)."""
    unknown = set(properties) - _SUPPORTED_PROPERTIES
    if unknown:
        raise ArmError(400, "BadRequest", f"the twin does not implement {', '.join(sorted(unknown))}")
    destination = properties.get("destination") or {}
    if destination.get("endpointType") != "WebHook":
        raise ArmError(400, "BadRequest", "only WebHook destinations are implemented by the twin")
    hook = destination.get("properties") or {}
    for name in ("azureActiveDirectoryTenantId", "azureActiveDirectoryApplicationIdOrUri", "deliveryAttributeMappings"):
        if hook.get(name):
            raise ArmError(400, "BadRequest", f"the twin does not implement the webhook's {name}")
    if hook.get("maxEventsPerBatch") not in (None, 1):
        raise ArmError(400, "BadRequest", "the twin delivers one event per request (maxEventsPerBatch 1)")
    endpoint = hook.get("endpointUrl") or (existing.endpoint if existing else None)
    if not isinstance(endpoint, str) or not endpoint:
        raise ArmError(400, "BadRequest", "destination.properties.endpointUrl is required")
    if not endpoint.lower().startswith("https://"):
        raise ArmError(400, "BadRequest", "the webhook endpoint URL must be https")
    filters = properties.get("filter") or {}
    if set(filters) - _SUPPORTED_FILTER:
        raise ArmError(400, "BadRequest", f"the twin does not implement filter "
                                          f"{', '.join(sorted(set(filters) - _SUPPORTED_FILTER))}")
    if filters.get("advancedFilters") or filters.get("isSubjectCaseSensitive"):
        raise ArmError(400, "BadRequest", "the twin implements neither advanced nor case-sensitive subject filters")
    types = filters.get("includedEventTypes")
    if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) and t for t in types)):
        raise ArmError(400, "BadRequest", "includedEventTypes must be a list of event type names")
    for name in ("subjectBeginsWith", "subjectEndsWith"):
        if not isinstance(filters.get(name) or "", str):
            raise ArmError(400, "BadRequest", f"{name} must be a string")
    schema = properties.get("eventDeliverySchema") or topic.input_schema
    if schema not in (EVENT_GRID_SCHEMA, CLOUD_EVENT_SCHEMA) or schema != topic.input_schema:
        raise ArmError(400, "BadRequest", f"the twin delivers in the topic's schema ({topic.input_schema}) only")
    attempts = (properties.get("retryPolicy") or {}).get("maxDeliveryAttempts")
    if attempts is not None and (not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS):
        raise ArmError(400, "BadRequest", f"maxDeliveryAttempts must be 1..{MAX_ATTEMPTS}")
    dead_letter = properties.get("deadLetterDestination")
    container = None
    if dead_letter:
        if dead_letter.get("endpointType") != "StorageBlob":
            raise ArmError(400, "BadRequest", "dead letters go to a StorageBlob destination only")
        container = (dead_letter.get("properties") or {}).get("blobContainerName")
    labels = properties.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise ArmError(400, "BadRequest", "labels must be a list of strings")
    return {"endpoint": endpoint, "event_types": types, "subject_begins_with": filters.get("subjectBeginsWith") or "",
            "subject_ends_with": filters.get("subjectEndsWith") or "", "max_delivery_attempts": attempts,
            "dead_letter_container": container, "labels": labels}


__all__ = ["EventGridManagement", "API_VERSION", "AWAITING_MANUAL_ACTION", "topic_arm_id"]
