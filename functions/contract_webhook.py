"""POST /api/contracts: the contract ledger's webhook for fully signed contracts.

Verifies every signature against its signer's DID document, the signer set and the
validity window (shared.contract), stores the contract once under its id and digest (another
contract under the same id is another contract, never a conflict), and starts its run if every
input has already arrived. Any rejection is a 4xx with the reason and starts nothing. A contract
that allows continued training gets its state KEK here, before any run can start
(orchestrations/state_key.py); if the vault fails, the answer is 503 and the ledger delivers again.
"""
from __future__ import annotations

import asyncio
import base64
import logging

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from orchestrations.admission import start_run_if_ready
from shared import azure_clients, telemetry
from orchestrations.state_key import ensure_state_kek
from shared.contract import ContractError, keeps_model_state, verify_contract
from shared.contract_store import ContractStore
from shared.run_records import run_id_for

bp = df.Blueprint()
log = logging.getLogger(__name__)

MAX_ENVELOPE_BYTES = 1 << 20


def _envelope(req: func.HttpRequest) -> tuple[bytes, str | None]:
    """The ledger posts the COSE_Sign envelope as `application/cose`, its sequence number in
    `x-ledger-seqno`."""
    body = req.get_body()
    if not body:
        raise ValueError("empty body: expected a COSE_Sign envelope")
    if len(body) > MAX_ENVELOPE_BYTES:
        raise ValueError("contract envelope too large")
    return body, req.headers.get("x-ledger-seqno")


@bp.route(route="contracts", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def contract_webhook(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        envelope, seqno = _envelope(req)
    except ValueError as problem:
        return error(400, f"malformed request: {problem}")
    try:  # DID documents are fetched over HTTPS: blocking, so off the event loop
        contract = await asyncio.to_thread(verify_contract, envelope)
    except ContractError as problem:
        log.warning("contract rejected: %s", problem)
        return error(problem.http_status, str(problem))
    with telemetry.run_context(contract_id=contract.contract_id,
                               run_id=run_id_for(contract.contract_id, contract.digest)):
        record, new = await asyncio.to_thread(ContractStore(azure_clients.blob_service()).accept, contract.payload,
                                              contract.digest, base64.b64encode(envelope).decode(), seqno)
        contract_id, digest = record["contract_id"], record["digest"]
        if new:
            log.info("accepted contract %s@%s (ledger seqno %s)", contract_id, digest[:12], seqno)
        if keeps_model_state(record["payload"]):
            try:
                await asyncio.to_thread(ensure_state_kek, record["payload"], digest)
            except Exception as problem:  # the ledger retries: the run starts once the key is there
                log.warning("state key of contract %s not created: %s", contract_id, type(problem).__name__)
                return error(503, "the contract's model-state key could not be created; deliver it again")
        await start_run_if_ready(client, contract_id, digest)
    return json_response({"contract_id": contract_id, "digest": digest, "run_id": run_id_for(contract_id, digest),
                          "status": "accepted"})
