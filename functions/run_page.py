"""The live run page, served by the app itself (shared/page_sessions.py says how one signs in):

  POST /api/page/link     bearer token -> {"url": one-time sign-in link, "expires_in"}
  GET  /api/page/open     ?code=<one-time code>: sets the session cookie, 303 to /api/page
  GET  /api/page          the page (session cookie)
  GET  /api/page/app.js   its script (session cookie)
  GET  /api/page/state    the party's contracts and runs as JSON (session cookie), fetched every 2 s

Anonymous at the host: the bearer token, the one-time code or the cookie is the credential; no
function key in any URL. Responses are no-store; the page's script writes text only (no HTML
from data) under a Content-Security-Policy that allows this origin's script and fetches only.
"""
from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from functions.party_requests import SECRET_SETTING, calling_party, refused
from functions.run_page_assets import PAGE_HTML, PAGE_SCRIPT, message_html
from shared import azure_clients, settings
from shared.page_sessions import LINK_SECONDS, PageLinks, PageSessions
from shared.party_auth import PartyAuthError
from shared.party_overview import overview

bp = df.Blueprint()
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _sessions() -> PageSessions:
    secret = settings.get(SECRET_SETTING)
    if not secret:
        raise PartyAuthError(f"party authentication is not configured: app setting {SECRET_SETTING} is missing", 500)
    return PageSessions(secret)


def _page_party(req: func.HttpRequest) -> str:
    return _sessions().did(req.headers.get("cookie"))


def _html(body: str, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(body, status_code=status, mimetype="text/html", charset="utf-8",
                             headers={**_NO_STORE, "Content-Security-Policy": _CSP})


@bp.route(route="page/link", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def page_link(req: func.HttpRequest) -> func.HttpResponse:
    try:
        did = calling_party(req)
    except PartyAuthError as problem:
        return refused(problem)
    code = PageLinks(azure_clients.blob_service()).issue(did)
    base = req.url.split("/api/", 1)[0]
    return json_response({"url": f"{base}/api/page/open?code={code}", "expires_in": LINK_SECONDS},
                         headers=_NO_STORE)


@bp.route(route="page/open", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def page_open(req: func.HttpRequest) -> func.HttpResponse:
    try:
        sessions = _sessions()
        did = PageLinks(azure_clients.blob_service()).redeem(req.params.get("code"))
    except PartyAuthError as problem:
        return _html(message_html(str(problem)), problem.http_status)
    # Secure even on the local host's http://127.0.0.1: browsers treat loopback as a secure context
    return func.HttpResponse(status_code=303, headers={
        **_NO_STORE, "Location": "/api/page", "Set-Cookie": sessions.set_cookie(did)})


@bp.route(route="page", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def page(req: func.HttpRequest) -> func.HttpResponse:
    try:
        _page_party(req)
    except PartyAuthError as problem:
        return _html(message_html(str(problem)), problem.http_status)
    return _html(PAGE_HTML)


@bp.route(route="page/app.js", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def page_script(req: func.HttpRequest) -> func.HttpResponse:
    try:
        _page_party(req)
    except PartyAuthError as problem:
        return error(problem.http_status, str(problem), _NO_STORE)
    return func.HttpResponse(PAGE_SCRIPT, mimetype="text/javascript", charset="utf-8", headers=_NO_STORE)


@bp.route(route="page/state", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def page_state(req: func.HttpRequest) -> func.HttpResponse:
    try:
        did = _page_party(req)
    except PartyAuthError as problem:
        return error(problem.http_status, str(problem), _NO_STORE)
    return json_response(overview(azure_clients.blob_service(), did), headers=_NO_STORE)
