"""Route and blob-path templates, matched the way the Functions host matches them; app loading
(SDK-typed parameters indexed as the worker indexes them); the blob-trigger metadata and the
blob reference a function receives."""
import json
import os
import sys

import azure.functions as func
import pytest
import requests
from azure.functions import meta
from azurefunctions.extensions.bindings.blob import BlobClient

from local_emulator.host.app_loader import FunctionEntry, load_functions, task_hub_name
from local_emulator.host.blob_trigger import blob_reference, compile_blob_path
from local_emulator.host.http_trigger import compile_route
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize("template,path,params", [
    ("hello/{name}", "/hello/ada", {"name": "ada"}),
    ("hello/{name}", "/HELLO/ada/", {"name": "ada"}),
    ("items/{id:int?}", "/items", {"id": None}),
    ("items/{id:int?}", "/items/7", {"id": "7"}),
    ("files/{*rest}", "/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
])
def test_route_templates_match(template, path, params):
    found = compile_route(template).match(path)
    assert found and found.groupdict() == params


@pytest.mark.parametrize("template,path", [("hello/{name}", "/hello"), ("hello/{name}", "/hello/a/b"),
                                           ("a.b", "/aXb")])
def test_route_templates_refuse(template, path):
    assert compile_route(template).match(path) is None


def test_blob_paths():
    container, prefix, pattern = compile_blob_path("datasets/{contract}/{name}.ccr")
    assert (container, prefix) == ("datasets", "")
    assert pattern.match("c1/icmr.ccr").groupdict() == {"contract": "c1", "name": "icmr"}
    assert pattern.match("c1/icmr.csv") is None
    container, prefix, pattern = compile_blob_path("models/in/{name}")
    assert (container, prefix) == ("models", "in/") and pattern.match("in/x") and not pattern.match("out/x")


def test_task_hub_names_are_checked(tmp_path):
    assert task_hub_name(tmp_path, "ccrhub") == "ccrhub"
    for bad in ("ab", "has-dash", "1digitfirst"):
        with pytest.raises(ValueError, match="task hub name"):
            task_hub_name(tmp_path, bad)


def write_app(folder, body: str):
    folder.mkdir()
    (folder / "function_app.py").write_text("import azure.functions as func\n" + body)
    return folder


def test_a_function_with_an_unsupported_binding_fails_indexing_alone(tmp_path, function_host):
    """As Azure refuses one function it cannot index: named in the log with the binding type;
    the rest of the app starts and serves."""
    app = write_app(tmp_path / "app", '''
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

@app.route(route="alive")
def alive(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("yes")

@app.route(route="rows")
@app.table_output(arg_name="row", table_name="rows", connection="AzureWebJobsStorage")
def to_table(req: func.HttpRequest, row: func.Out[str]) -> func.HttpResponse:
    return func.HttpResponse("unreachable")
''')
    host = function_host(app)
    assert requests.get(f"{host.url}/api/alive", timeout=10).text == "yes"
    assert requests.get(f"{host.url}/api/rows", timeout=10).status_code == 404
    assert ("Error indexing method 'Functions.to_table'. Binding type(s) 'table' are not supported by the local "
            "host.") in host.logs()


def index_in_process(app_dir, connections=("AzureWebJobsStorage", "CCR_STORAGE_CONNECTION")):
    """load_functions here, leaving sys.path (the loader puts the app folder first) and any
    `function_app` module already imported as they were. The connection settings the app's
    bindings name are defined for the call (indexing refuses a function whose one is not)."""
    saved_path, saved_module = list(sys.path), sys.modules.get("function_app")
    saved_env = dict(os.environ)
    os.environ.update({name: os.environ.get(name) or "UseDevelopmentStorage=true" for name in connections})
    try:
        return load_functions(app_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        if saved_module is None:
            sys.modules.pop("function_app", None)
        else:
            sys.modules["function_app"] = saved_module


def test_an_app_needs_exactly_one_function_app(tmp_path):
    app = write_app(tmp_path / "two", "a = func.FunctionApp()\nb = func.FunctionApp()\n")
    with pytest.raises(ValueError, match="exactly one FunctionApp"):
        index_in_process(app)


def test_the_input_triggers_are_deferred_blob_bindings_the_rest_unchanged():
    """What the worker reports for the real app: the three blob triggers (two inputs, inference
    batches) take a BlobClient, so
    their bindings carry SupportsDeferredBinding (true on the trigger, false on the durable
    client, as the base extension writes them); functions without SDK types have no flag."""
    index = index_in_process(PROJECT_ROOT)
    triggers = (("dataset_arrived", "datasets"), ("model_arrived", "models"),
                ("inference_batch_arrived", "inference-batches"))
    for name, container in triggers:
        entry = index.entries[name]
        assert entry.sdk_types == {"blob": BlobClient}
        assert entry.trigger == {"direction": "IN", "type": "blobTrigger", "name": "blob",
                                 "path": container + "/{name}", "connection": "CCR_STORAGE_CONNECTION",
                                 "source": "EventGrid", "properties": {"SupportsDeferredBinding": True}}
        assert entry.binding_of_type("durableClient") == {
            "direction": "IN", "type": "durableClient", "name": "client",
            "properties": {"SupportsDeferredBinding": False}}
    others = [entry for entry in index.entries.values() if not entry.sdk_types]
    assert len(others) == len(index) - len(triggers) and \
        sorted(index.by_trigger("blobTrigger"), key=lambda e: e.name) == sorted(
            (index.entries[name] for name, _ in triggers), key=lambda e: e.name)
    assert not any("properties" in binding for entry in others for binding in entry.bindings)


def test_an_sdk_type_its_binding_cannot_give_is_refused_at_load(tmp_path):
    app = write_app(tmp_path / "mistyped", '''
import azurefunctions.extensions.bindings.blob as blob

app = func.FunctionApp()

@app.event_grid_trigger(arg_name="event")
def on_event(event: blob.BlobClient):
    pass
''')
    with pytest.raises(ValueError) as refused:
        index_in_process(app)
    assert str(refused.value) == ("function on_event: parameter 'event' is typed BlobClient, "
                                  "which a 'eventGridTrigger' binding cannot give")


def test_blob_uri_given_to_the_function_carries_no_sas():
    from azure.storage.blob.aio import BlobServiceClient

    from local_emulator.host.blob_trigger import BlobTriggers

    service = BlobServiceClient.from_connection_string(
        "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=2020-08-04&sig=SECRET")
    container = service.get_container_client("datasets")
    blob = type("Blob", (), {"name": "c1/x.ccr", "size": 1, "etag": "e", "content_settings": None,
                             "metadata": {}})()
    uri = BlobTriggers._metadata(container, blob)["Uri"].value
    assert uri == "http://127.0.0.1:1/devstoreaccount1/datasets/c1/x.ccr"


def test_a_blob_reference_names_the_setting_not_the_connection_and_becomes_a_client(monkeypatch):
    """The ModelBindingData content names the connection *setting*; for an SDK-typed parameter
    the extension's converter resolves it from the environment and builds a BlobClient for that
    blob (no request made); any other parameter keeps azure-functions' converter."""
    monkeypatch.setenv("CCR_TEST_CONNECTION", "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                       "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1")
    datum = blob_reference("CCR_TEST_CONNECTION", "datasets", "c1/icmr.ccr")
    message = datum.value
    assert datum.type == "model_binding_data"
    assert (message.version, message.source, message.content_type) == ("1.0", "AzureStorageBlobs", "application/json")
    assert json.loads(message.content) == {"Connection": "CCR_TEST_CONNECTION", "ContainerName": "datasets",
                                           "BlobName": "c1/icmr.ccr"}
    trigger = {"type": "blobTrigger", "name": "blob"}
    sdk_typed = FunctionEntry("sdk", lambda blob: None, trigger, [trigger], {"blob": BlobClient})
    client = sdk_typed.decode_trigger(datum, {})
    assert (client.container_name, client.blob_name) == ("datasets", "c1/icmr.ccr")
    assert client.url == "http://127.0.0.1:1/devstoreaccount1/datasets/c1/icmr.ccr"

    stream = FunctionEntry("stream", lambda blob: None, trigger, [trigger]).decode_trigger(
        meta.Datum(b"abc", "bytes"), {"BlobTrigger": meta.Datum("datasets/c1/icmr.ccr", "string")})
    assert isinstance(stream, func.InputStream) and stream.read() == b"abc" and stream.name == "datasets/c1/icmr.ccr"
