"""Blob triggers on the input containers: an arrival may complete a contract's inputs.
The trigger parameter is an SDK `BlobClient` (a deferred binding), so the host hands over a
reference and never the encrypted content: only the blob's name matters here.

Both triggers take their events from Event Grid (`source=EventGrid`, the only blob trigger the
Flex Consumption plan runs): BlobCreated on the data account's system topic reaches the host's
`/runtime/webhooks/blobs` endpoint (infra/subscriptions.bicep). They watch the data connection
`CCR_STORAGE_CONNECTION`: identity-based in Azure (`CCR_STORAGE_CONNECTION__blobServiceUri`,
`__queueServiceUri`, `__credential`, `__clientId`), a connection string locally."""
from __future__ import annotations

import asyncio
import logging

import azure.durable_functions as df
import azure.functions as func
import azurefunctions.extensions.bindings.blob as sdk_blob

from orchestrations.admission import start_run_if_ready
from orchestrations.continued_admission import start_continued_runs
from shared import azure_clients, storage_names, telemetry
from shared.contract_store import ContractStore
from shared.run_records import run_id_for

bp = df.Blueprint()
log = logging.getLogger(__name__)
DATA_CONNECTION = "CCR_STORAGE_CONNECTION"


async def _arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    # one upload may serve several contracts: each accepted contract naming it may now be complete
    name = f"{blob.container_name}/{blob.blob_name}"
    contracts = await asyncio.to_thread(ContractStore(azure_clients.blob_service()).naming, name)  # blocking
    # perhaps a declared new version of a dataset whose contract allows continued training
    continued = await start_continued_runs(client, name) if not contracts and \
        blob.container_name == storage_names.DATASETS else []
    for result in continued:
        log.info("input %s arrived: %s", name, result)
    if not contracts and not continued:
        log.info("input %s arrived: no accepted contract names it yet", name)
    for contract_id, digest in contracts:
        with telemetry.run_context(contract_id=contract_id, run_id=run_id_for(contract_id, digest)):
            result = await start_run_if_ready(client, contract_id, digest)
            log.info("input %s arrived: %s", name, result)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.DATASETS}/{{name}}", connection=DATA_CONNECTION,
                 source=func.BlobSource.EVENT_GRID)
@bp.durable_client_input(client_name="client")
async def dataset_arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    await _arrived(blob, client)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.MODELS}/{{name}}", connection=DATA_CONNECTION,
                 source=func.BlobSource.EVENT_GRID)
@bp.durable_client_input(client_name="client")
async def model_arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    await _arrived(blob, client)
