"""Test app for queue triggers and blob bindings (not production code). Side effects go to
files under CCR_TEST_RECORD_DIR so tests can count runs."""
import json
import os
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
STORAGE = "AzureWebJobsStorage"


def record(kind: str, line: str) -> None:
    with open(os.path.join(os.environ["CCR_TEST_RECORD_DIR"], f"{kind}.log"), "a") as handle:
        handle.write(line + "\n")


@app.queue_trigger(arg_name="msg", queue_name="qt-copy", connection=STORAGE)
@app.blob_input(arg_name="text", path="qt-inputs/{queueTrigger}", connection=STORAGE)
@app.blob_output(arg_name="copy", path="qt-outputs/{queueTrigger}", connection=STORAGE)
def copy_upper(msg: func.QueueMessage, text: str, copy: func.Out[str]) -> None:
    """The named input blob, as text, copied upper-cased; a missing one is recorded as such."""
    record("copy", f"{msg.get_body().decode()}:{msg.dequeue_count}:{type(text).__name__}")
    if text is not None:
        copy.set(text.upper())


@app.queue_trigger(arg_name="msg", queue_name="%QT_JSON_QUEUE%", connection=STORAGE)
@app.blob_input(arg_name="raw", path="qt-inputs/{name}", data_type="binary", connection=STORAGE)
@app.blob_input(arg_name="stream", path="qt-inputs/{name}", connection=STORAGE)
@app.blob_output(arg_name="$return", path="qt-outputs/{name}.sizes", connection=STORAGE)
def sizes(msg: func.QueueMessage, raw: bytes, stream: func.InputStream) -> str:
    """A JSON message's property names the blob (the queue's name is an app setting); the sizes
    seen as bytes and as a stream."""
    return json.dumps({"bytes": [type(raw).__name__, len(raw)], "stream": len(stream.read()),
                       "id": msg.id, "kind": msg.get_json()["kind"]})


@app.blob_trigger(arg_name="blob", path="qt-arrivals/{stem}.txt", connection=STORAGE)
@app.blob_output(arg_name="receipt", path="qt-outputs/{stem}.receipt", connection=STORAGE)
def on_arrival(blob: func.InputStream, receipt: func.Out[bytes]) -> None:
    """A blob trigger's path names ({stem}) name its output blob."""
    receipt.set(b"seen " + str(len(blob.read())).encode())


@app.queue_trigger(arg_name="msg", queue_name="qt-doomed", connection=STORAGE)
def doomed(msg: func.QueueMessage) -> None:
    record("doomed", f"{msg.get_body().decode()}:{msg.dequeue_count}")
    raise RuntimeError("this message always fails")


@app.queue_trigger(arg_name="msg", queue_name="qt-slow", connection=STORAGE)
def slow(msg: func.QueueMessage) -> None:
    """Runs longer than the host's message lease (CCR_HOST_QUEUE_LEASE_SECONDS in the test)."""
    record("slow", f"{msg.get_body().decode()}:{msg.dequeue_count}:start")
    time.sleep(float(os.environ["QT_SLOW_SECONDS"]))
    record("slow", f"{msg.get_body().decode()}:{msg.dequeue_count}:end")


@app.route(route="blobs/{name}")
@app.blob_input(arg_name="text", path="qt-inputs/{name}", connection=STORAGE)
def read_blob(req: func.HttpRequest, text: str) -> func.HttpResponse:
    """An HTTP route parameter naming the input blob."""
    if text is None:
        return func.HttpResponse("no such blob", status_code=404)
    return func.HttpResponse(text)


@app.queue_trigger(arg_name="msg", queue_name="qt-elsewhere", connection="UndefinedQueueAccount")
def queue_on_undefined_account(msg: func.QueueMessage) -> None:
    record("never", "queue")


@app.route(route="undefined")
@app.blob_input(arg_name="text", path="qt-inputs/x", connection="UndefinedBlobAccount")
def blob_on_undefined_account(req: func.HttpRequest, text: str) -> func.HttpResponse:
    return func.HttpResponse("unreachable")


@app.queue_trigger(arg_name="msg", queue_name="qt-tables", connection=STORAGE)
@app.table_output(arg_name="row", table_name="qttables", connection=STORAGE)
def needs_table_output(msg: func.QueueMessage, row: func.Out[str]) -> None:
    """A binding type the local host lacks: this function alone fails indexing."""
    record("never", "table")


@app.queue_trigger(arg_name="msg", queue_name="%QT_UNDEFINED_QUEUE%", connection=STORAGE)
def queue_named_by_an_undefined_setting(msg: func.QueueMessage) -> None:
    record("never", "unnamed queue")
