"""POST /api/auth/challenge and /api/auth/token: a party proves its DID and gets a bearer token
(shared/party_auth.py). Anonymous at the host: the party's signature is the authentication."""
from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from functions.party_requests import BadRequest, authority, json_body, refused
from shared.party_auth import PartyAuthError

bp = df.Blueprint()


@bp.route(route="auth/challenge", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_challenge(req: func.HttpRequest) -> func.HttpResponse:
    """{"did"} -> {"challenge", "expires_in"}"""
    try:
        service = authority()
        return json_response({"challenge": service.issue_challenge(json_body(req).get("did")),
                              "expires_in": service.challenge_seconds})
    except BadRequest as problem:
        return error(400, str(problem))
    except PartyAuthError as problem:
        return refused(problem)


@bp.route(route="auth/token", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_token(req: func.HttpRequest) -> func.HttpResponse:
    """{"did", "challenge", "signature"} -> {"access_token", "token_type", "expires_in"}"""
    try:
        body = json_body(req)
        token = authority().exchange(body.get("did"), body.get("challenge"), body.get("signature"))
    except BadRequest as problem:
        return error(400, str(problem))
    except PartyAuthError as problem:
        return refused(problem)
    return json_response({"access_token": token.access_token, "token_type": "Bearer",
                          "expires_in": token.expires_in}, headers={"Cache-Control": "no-store"})
