"""Blob trigger on `inference-batches/`: a requester's batch may start an inference run
(orchestrations/inference_admission.py decides, and records why when it does not). As for the
training inputs (functions/input_arrivals.py), the trigger takes a `BlobClient` reference and
BlobCreated events through Event Grid: only the blob's name matters here."""
from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func
import azurefunctions.extensions.bindings.blob as sdk_blob

from functions.input_arrivals import DATA_CONNECTION
from orchestrations.inference_admission import start_inference
from shared import storage_names

bp = df.Blueprint()
log = logging.getLogger(__name__)


@bp.blob_trigger(arg_name="blob", path=f"{storage_names.INFERENCE_BATCHES}/{{name}}", connection=DATA_CONNECTION,
                 source=func.BlobSource.EVENT_GRID)
@bp.durable_client_input(client_name="client")
async def inference_batch_arrived(blob: sdk_blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    name = f"{blob.container_name}/{blob.blob_name}"
    log.info("inference batch %s arrived: %s", name, await start_inference(client, name))
