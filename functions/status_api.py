"""GET /api/runs, /api/runs/{run_id} and /api/contracts/{contract_id}/{digest}: what the
parties may know about runs and about their accepted contracts (signers, inputs, run).

A bearer token from /api/auth/token is required (anonymous at the host: the token is the
credential, no function key is handed to parties); a party sees only the runs of contracts it
is a party of (shared/party_runs.py), and another party's run answers 404 like a missing one."""
from __future__ import annotations

import re

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from functions.party_requests import calling_party, refused
from shared import azure_clients
from shared.party_auth import PartyAuthError
from shared.party_runs import RUN_SUMMARY, PartyRuns

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

bp = df.Blueprint()


@bp.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    try:
        did = calling_party(req)
    except PartyAuthError as problem:
        return refused(problem)
    records = PartyRuns(azure_clients.blob_service()).list_for(did)
    records.sort(key=lambda record: record["created"], reverse=True)
    return json_response([_summary(record) for record in records])


@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def show_run(req: func.HttpRequest) -> func.HttpResponse:
    try:
        did = calling_party(req)
    except PartyAuthError as problem:
        return refused(problem)
    run_id = req.route_params.get("run_id", "")
    record = PartyRuns(azure_clients.blob_service()).get_for(did, run_id) if run_id.startswith("run-") else None
    if record is None:
        return error(404, f"no run {run_id!r}")
    return json_response(record)


@bp.route(route="contracts/{contract_id}/{digest}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def contract_status(req: func.HttpRequest) -> func.HttpResponse:
    """An accepted contract for one of its parties: signers, inputs present and missing, its run."""
    try:
        did = calling_party(req)
    except PartyAuthError as problem:
        return refused(problem)
    contract_id, digest = req.route_params.get("contract_id", ""), req.route_params.get("digest", "")
    status = None
    if _HEX64.match(digest) and "/" not in contract_id:
        status = PartyRuns(azure_clients.blob_service()).contract_status(did, contract_id, digest)
    if status is None:
        return error(404, f"no accepted contract {contract_id!r} with digest {digest[:12]}... of yours")
    return json_response(status)


def _summary(record: dict) -> dict:
    return {key: record.get(key) for key in RUN_SUMMARY}
