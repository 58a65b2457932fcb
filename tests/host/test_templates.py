"""Route and blob-path templates, matched the way the Functions host matches them; app loading;
the blob-trigger metadata a function receives."""
import sys

import pytest

from local_emulator.host.app_loader import task_hub_name
from local_emulator.host.blob_trigger import compile_blob_path
from local_emulator.host.http_trigger import compile_route


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


def test_an_app_with_an_unsupported_binding_is_refused_clearly(tmp_path, function_host):
    app = write_app(tmp_path / "app", '''
app = func.FunctionApp()

@app.queue_trigger(arg_name="msg", queue_name="work", connection="AzureWebJobsStorage")
def on_message(msg: func.QueueMessage):
    pass
''')
    with pytest.raises(RuntimeError) as refused:
        function_host(app)
    assert "binding type 'queueTrigger' is not supported" in str(refused.value)


def test_an_app_needs_exactly_one_function_app(tmp_path, monkeypatch):
    from local_emulator.host.app_loader import load_functions
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader puts the app folder first
    saved = sys.modules.get("function_app")
    app = write_app(tmp_path / "two", "a = func.FunctionApp()\nb = func.FunctionApp()\n")
    try:
        with pytest.raises(ValueError, match="exactly one FunctionApp"):
            load_functions(app)
    finally:
        if saved is None:
            sys.modules.pop("function_app", None)
        else:
            sys.modules["function_app"] = saved


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
