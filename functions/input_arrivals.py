"""Blob triggers on the input containers: an arrival may complete a contract's inputs.
The trigger parameter is an SDK `BlobClient` (a deferred binding), so the host hands over a
reference and never the encrypted content: only the blob's name matters here."""
from __future__ import annotations

import logging

import azure.durable_functions as df
import azurefunctions.extensions.bindings.blob as sdk_blob

from orchestrations.admission import start_run_if_ready
from shared import storage_names

bp = df.Blueprint()
log = logging.getLogger(__name__)


async def _arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    # blob names are "<contract_id>/<file>" (storage_names)
    name = f"{blob.container_name}/{blob.blob_name}"
    contract_id, separator, _ = blob.blob_name.partition("/")
    if not separator:
        log.warning("ignoring blob %s: not under a contract folder", name)
        return
    result = await start_run_if_ready(client, contract_id)
    log.info("input %s arrived: %s", name, result)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.DATASETS}/{{name}}", connection="AzureWebJobsStorage")
@bp.durable_client_input(client_name="client")
async def dataset_arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    await _arrived(blob, client)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.MODELS}/{{name}}", connection="AzureWebJobsStorage")
@bp.durable_client_input(client_name="client")
async def model_arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    await _arrived(blob, client)
