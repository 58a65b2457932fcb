"""The contract ledger as a party's CLI reaches it: its URL, requests with the configured CA
bundle, and the ledger's stated reason when it refuses."""
from __future__ import annotations

from ccr.common import CliError


def ledger_url(args) -> str:
    from shared import settings
    url = getattr(args, "ledger", None) or settings.get("CCR_LEDGER_URL")
    if not url:
        raise CliError("no ledger: pass --ledger or set CCR_LEDGER_URL")
    return url.rstrip("/")


def call(method: str, url: str, **kwargs):
    import requests

    from shared import settings
    try:
        return requests.request(method, url, timeout=30, verify=settings.ca_bundle(), **kwargs)
    except requests.RequestException as error:
        origin = settings.source("CCR_LEDGER_URL")
        hint = f"; CCR_LEDGER_URL from {origin}: is the ledger running there? (`ccr profile`)" if origin else ""
        raise CliError(f"cannot reach {url} ({type(error).__name__}){hint}") from None


def reason(response) -> str:
    """The ledger's stated reason ({"error": ...}), shortened."""
    try:
        return str(response.json().get("error", ""))[:200]
    except (ValueError, AttributeError):
        return response.reason or ""
