"""Test app for the local host (not production code): blob triggers with source=EventGrid, as
functions/input_arrivals.py declares them, on the data connection. Each invocation appends a
line to <CCR_TEST_RECORD_DIR>/arrivals.log; a blob named fail-* always fails."""
import os

import azure.functions as func
import azurefunctions.extensions.bindings.blob as sdk_blob

app = func.FunctionApp()
CONTAINER = os.environ.get("TEST_EG_CONTAINER", "egblobs")


def record(line: str) -> None:
    with open(os.path.join(os.environ["CCR_TEST_RECORD_DIR"], "arrivals.log"), "a") as handle:
        handle.write(line + "\n")


@app.blob_trigger(arg_name="blob", path=CONTAINER + "/in/{name}", connection="CCR_STORAGE_CONNECTION",
                  source=func.BlobSource.EVENT_GRID)
def arrived(blob: sdk_blob.BlobClient) -> None:
    """SDK-typed (deferred binding), like the real triggers: a client, never the content."""
    etag = blob.get_blob_properties().etag
    record(f"{blob.container_name}/{blob.blob_name}:{etag}")
    if blob.blob_name.startswith("in/fail-"):
        raise RuntimeError("this blob always fails")
