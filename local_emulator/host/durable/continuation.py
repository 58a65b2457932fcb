"""The continuation token of instance queries (`x-ms-continuation-token`): opaque to clients,
here the base64 of the last instance id a page returned, so the next page starts after it."""
from __future__ import annotations

import base64
import binascii
import json

HEADER = "x-ms-continuation-token"


def encode(last_instance_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_instance_id}).encode()).decode()


def decode(token: str) -> str | None:
    """The id a page ended at; None for no token; ValueError for one this host did not issue."""
    token = token.strip()
    if not token:
        return None
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        after = None
    if isinstance(after, str):
        return after
    raise ValueError("the continuation token was not issued by this host")
