"""Blob triggers on the input containers: an arrival may complete a contract's inputs."""
from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from orchestrations.admission import start_run_if_ready
from shared import storage_names

bp = df.Blueprint()
log = logging.getLogger(__name__)


async def _arrived(blob: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    # blob.name is "<container>/<contract_id>/<file>" (storage_names)
    parts = (blob.name or "").split("/")
    if len(parts) < 3:
        log.warning("ignoring blob %s: not under a contract folder", blob.name)
        return
    result = await start_run_if_ready(client, parts[1])
    log.info("input %s arrived: %s", blob.name, result)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.DATASETS}/{{name}}", connection="AzureWebJobsStorage")
@bp.durable_client_input(client_name="client")
async def dataset_arrived(blob: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    await _arrived(blob, client)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.MODELS}/{{name}}", connection="AzureWebJobsStorage")
@bp.durable_client_input(client_name="client")
async def model_arrived(blob: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    await _arrived(blob, client)
