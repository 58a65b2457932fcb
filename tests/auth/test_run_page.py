"""Signing in to the live run page (shared/page_sessions.py): a one-time, short-lived link bought
with a party's bearer token sets a short-lived HttpOnly SameSite=Strict cookie; the page and its
JSON show that party's contracts and runs only. The browser test is tests/run/test_covid_run.py."""
from __future__ import annotations

import time

import requests
from azure.storage.blob import BlobServiceClient

from shared.page_sessions import COOKIE, PageLinks, PageSessions
from tests.auth.conftest import post


def link(app, token: str) -> str:
    answer = post(app, "page/link", {}, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["expires_in"] <= 60 and answer.headers["Cache-Control"] == "no-store"
    return answer.json()["url"]


def open_link(url: str) -> requests.Response:
    return requests.get(url, allow_redirects=False, timeout=30)


def test_a_one_time_link_sets_a_short_lived_httponly_strict_cookie_once(app, tokens, stored):
    url = link(app, tokens["cowin"])
    assert url.startswith(f"{app.url}/api/page/open?code=") and "code=" + app.function_key not in url
    first = open_link(url)
    assert first.status_code == 303 and first.headers["Location"] == "/api/page"
    cookie = first.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= set(attributes)
    assert attributes["samesite"] == "SameSite=Strict" and attributes["path"] == "Path=/api/page"
    assert int(attributes["max-age"].split("=")[1]) <= 900
    session = cookie.split(";")[0]

    again = open_link(url)
    assert again.status_code == 401 and "Set-Cookie" not in again.headers and "used or expired" in again.text

    page = requests.get(f"{app.url}/api/page", headers={"Cookie": session}, timeout=30)
    assert page.status_code == 200 and "<script src=\"/api/page/app.js\">" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    state = requests.get(f"{app.url}/api/page/state", headers={"Cookie": session}, timeout=30).json()
    runs = {run["run_id"] for run in state["runs"]}
    assert stored["a"]["run_id"] in runs and stored["b"]["run_id"] not in runs
    contracts = {c["contract_id"] for c in state["contracts"]}
    assert stored["a"]["payload"]["contract_id"] in contracts and stored["b"]["payload"]["contract_id"] not in contracts


def test_an_expired_link_is_refused(app, azurite, parties):
    service = BlobServiceClient.from_connection_string(azurite)
    code = PageLinks(service, now=lambda: time.time() - 120).issue(parties["tdc"].did)  # issued 2 minutes ago
    refused = open_link(f"{app.url}/api/page/open?code={code}")
    assert refused.status_code == 401 and "Set-Cookie" not in refused.headers
    assert open_link(f"{app.url}/api/page/open?code=made-up-code-of-enough-length").status_code == 401


def test_the_page_needs_a_valid_unexpired_session_cookie(app, parties, tokens):
    did = parties["tdc"].did
    forged = PageSessions("x" * 32).cookie_value(did)                              # another secret
    expired = PageSessions(app.party_secret, now=lambda: time.time() - 3600).cookie_value(did)
    for headers in ({}, {"Cookie": f"{COOKIE}={forged}"}, {"Cookie": f"{COOKIE}={expired}"},
                    {"Cookie": f"{COOKIE}={tokens['tdc']}"},                         # a bearer token is no cookie
                    {"Authorization": f"Bearer {tokens['tdc']}"}):
        for route in ("page", "page/state", "page/app.js"):
            assert requests.get(f"{app.url}/api/{route}", headers=headers, timeout=30).status_code == 401, (route,
                                                                                                          headers)
    assert post(app, "page/link", {}).status_code == 401
