"""Settings as Core Tools and Azure resolve them (issue 13 item 8): local.settings.json's
Values reach the app (the environment winning), a function whose connection setting is
undefined fails indexing alone naming the setting, and host.json's hubName is honoured. An
entity function is indexed beside the others (item 5)."""
import json

import requests

APP = '''
import os
import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

@app.route(route="setting/{name}")
def setting(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(os.environ.get(req.route_params["name"], "<unset>"))

@app.blob_trigger(arg_name="blob", path="never/{name}", connection="MissingStorage")
def needs_missing(blob: func.InputStream):
    pass

@app.blob_trigger(arg_name="blob", path="never/{name}", connection="LocalStorage")
def needs_local(blob: func.InputStream):
    pass

@app.entity_trigger(context_name="context")
def counter_entity(context):
    pass
'''


def test_local_settings_connections_and_hub_name(tmp_path, function_host, azurite):
    app = tmp_path / "app"
    app.mkdir()
    (app / "function_app.py").write_text(APP)
    (app / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {
        "durableTask": {"hubName": "%SETTINGS_TEST_HUB%"}}}))
    (app / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {
        "GREETING": "from local settings", "OVERRIDDEN": "from the file",
        "LocalStorage": azurite, "SETTINGS_TEST_HUB": "settingshub"}}))
    host = function_host(app, env={"CCR_TASK_HUB": "", "OVERRIDDEN": "from the environment"})

    def setting(name: str) -> str:
        answer = requests.get(f"{host.url}/api/setting/{name}", params={"code": host.function_key}, timeout=10)
        assert answer.status_code == 200
        return answer.text
    assert setting("GREETING") == "from local settings"
    assert setting("OVERRIDDEN") == "from the environment"
    logs = host.logs()
    assert "Skipping 'OVERRIDDEN' from local.settings.json" in logs
    assert "Error indexing method 'Functions.needs_missing'" in logs and "'MissingStorage'" in logs
    assert "Functions.needs_local" not in logs  # its connection comes from local.settings.json
    assert "Functions.counter_entity" not in logs
    assert "3 functions, task hub settingshub" in logs
