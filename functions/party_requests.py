"""What the party-facing HTTP triggers share: the control plane's party authority (secret from
the app setting CCR_PARTY_AUTH_SECRET, audience `ccr-control-plane`), the calling party's DID
from its bearer token, and JSON bodies. The mechanism itself is shared/party_auth.py."""
from __future__ import annotations

import json
import logging

import azure.functions as func

from functions.http_responses import error
from shared import settings
from shared.party_auth import CONTROL_PLANE_AUDIENCE, PartyAuthError, PartyAuthority

SECRET_SETTING = "CCR_PARTY_AUTH_SECRET"
MAX_BODY = 256 * 1024
log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request body that is not what the endpoint takes."""


def authority() -> PartyAuthority:
    secret = settings.get(SECRET_SETTING)
    if not secret:
        raise PartyAuthError(f"party authentication is not configured: app setting {SECRET_SETTING} is missing", 500)
    return PartyAuthority(secret, CONTROL_PLANE_AUDIENCE)


def calling_party(req: func.HttpRequest) -> str:
    """The DID its bearer token names (PartyAuthError when missing, invalid or expired)."""
    return authority().bearer(req.headers.get("authorization"))


def refused(problem: PartyAuthError) -> func.HttpResponse:
    """401 with the reason (and a Bearer challenge), 400/500/503 as the error says."""
    if problem.http_status >= 500:
        log.error("party authentication unavailable: %s", problem)
    headers = {"WWW-Authenticate": 'Bearer realm="ccr"'} if problem.http_status == 401 else None
    return error(problem.http_status, str(problem), headers)


def json_body(req: func.HttpRequest) -> dict:
    body = req.get_body()
    if len(body) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        document = json.loads(body or b"null")
    except ValueError:
        raise BadRequest("request body must be a JSON object") from None
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    return document
