"""POST/GET /api/subscriptions and DELETE /api/subscriptions/{name}: a party subscribes a webhook
to the events of its own runs (shared/party_events.py). Anonymous at the host: the party's
bearer token is the credential; the app, not the party, fixes the subject filter."""
from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from functions.party_requests import BadRequest, calling_party, json_body, refused
from shared import azure_clients, settings
from shared.party_auth import PartyAuthError
from shared.party_events import TOPIC_SETTING, PartySubscriptions, SubscriptionRefused

bp = df.Blueprint()
log = logging.getLogger(__name__)


def _subscriptions() -> PartySubscriptions | None:
    topic = settings.get(TOPIC_SETTING)
    return PartySubscriptions(azure_clients.eventgrid_management_client(), topic) if topic else None


def _unavailable() -> func.HttpResponse:
    log.error("event subscriptions are not configured: app setting %s is missing", TOPIC_SETTING)
    return error(503, "event subscriptions are not configured on this clean room")


@bp.route(route="subscriptions", methods=["POST", "GET"], auth_level=func.AuthLevel.ANONYMOUS)
def subscriptions(req: func.HttpRequest) -> func.HttpResponse:
    """POST {"name", "webhook", "event_types"?, "run_id"?} -> the subscription; GET -> the party's."""
    try:
        did = calling_party(req)
    except PartyAuthError as problem:
        return refused(problem)
    service = _subscriptions()
    if service is None:
        return _unavailable()
    if req.method == "GET":
        return json_response({"subscriptions": service.list(did)})
    try:
        body = json_body(req)
        created = service.create(did, body.get("name"), body.get("webhook"), body.get("event_types"),
                                 body.get("run_id"))
    except BadRequest as problem:
        return error(400, str(problem))
    except SubscriptionRefused as problem:
        return error(problem.http_status, str(problem))
    return json_response(created, 201)


@bp.route(route="subscriptions/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def unsubscribe(req: func.HttpRequest) -> func.HttpResponse:
    try:
        did = calling_party(req)
    except PartyAuthError as problem:
        return refused(problem)
    service = _subscriptions()
    if service is None:
        return _unavailable()
    name = req.route_params.get("name", "")
    try:
        deleted = service.delete(did, name)
    except SubscriptionRefused as problem:
        return error(problem.http_status, str(problem))
    return func.HttpResponse(status_code=204) if deleted else error(404, f"no subscription {name!r} of yours")
