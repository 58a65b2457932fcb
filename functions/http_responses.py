"""JSON responses for the HTTP triggers."""
from __future__ import annotations

import json

import azure.functions as func


def json_response(body: dict | list, status: int = 200, headers: dict | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, sort_keys=True), status_code=status,
                             mimetype="application/json", headers=headers)


def error(status: int, reason: str, headers: dict | None = None) -> func.HttpResponse:
    return json_response({"error": reason}, status, headers)
