"""POST /api/sas {"blob": "<container>/<path>", "permission": "create"|"read"[, "contract"]}:
a user SAS for one blob the calling party owns (shared/party_sas.py says which). Bearer token
required; anonymous at the host. The answer carries a secret: it is never logged."""
from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from functions.party_requests import BadRequest, calling_party, json_body, refused
from shared import azure_clients, party_sas
from shared.blob_sas import SasError
from shared.party_auth import PartyAuthError
from shared.party_runs import PartyRuns

bp = df.Blueprint()
log = logging.getLogger(__name__)


@bp.route(route="sas", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def party_sas_url(req: func.HttpRequest) -> func.HttpResponse:
    try:
        did = calling_party(req)
        body = json_body(req)
        service = azure_clients.blob_service()
        runs = PartyRuns(service)
        path = party_sas.check(did, body.get("blob"), body.get("permission"), body.get("contract"),
                               runs.tdc_of_run, runs.requester_of_run)
    except PartyAuthError as problem:
        return refused(problem)
    except BadRequest as problem:
        return error(400, str(problem))
    except party_sas.SasRefused as problem:
        log.info("SAS refused to %s: %s", did, problem)
        return error(problem.http_status, str(problem))
    try:
        issued = party_sas.issue(service, path, body["permission"])
    except SasError as problem:
        log.error("cannot sign a party SAS: %s", problem)
        return error(503, f"the clean room cannot sign a SAS now: {problem}")
    log.info("SAS (%s) for %s issued to %s", body["permission"], path, did)
    return json_response(issued, headers={"Cache-Control": "no-store"})
