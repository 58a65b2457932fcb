"""`python -m local_emulator up`: starts Azurite, the twins and the host, publishes
endpoints.json, serves the app, and SIGTERM stops everything it started."""
import json
import os
import signal
import socket
import subprocess
import sys

import requests

from tests.conftest import PROJECT_ROOT, wait_until
from tests.host.conftest import APP_DIR


def port_open(url: str) -> bool:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, int(port))) == 0


def test_up_publishes_endpoints_serves_the_app_and_stops_cleanly(tmp_path):
    folder = tmp_path / "emulator"
    env = {**os.environ, "CCR_EMULATOR_DIR": str(folder), "CCR_TEST_RECORD_DIR": str(tmp_path),
           "PYTHONPATH": str(PROJECT_ROOT)}
    for name in ("CCR_FUNCTION_KEY", "AzureWebJobsStorage", "CCR_STORAGE_CONNECTION"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-m", "local_emulator", "up", "--app-dir", str(APP_DIR),
                                "--port", "0", "--ephemeral-ports"], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        endpoints_file = folder / "endpoints.json"
        wait_until(endpoints_file.exists, 60, 0.1, "endpoints.json")
        endpoints = json.loads(endpoints_file.read_text())
        assert oct(endpoints_file.stat().st_mode & 0o777) == "0o600"
        assert {"AzureWebJobsStorage", "CCR_STORAGE_CONNECTION", "CCR_FUNCTIONS_URL",
                "CCR_FUNCTION_KEY"} <= set(endpoints)
        url = endpoints["CCR_FUNCTIONS_URL"]
        blob_url = endpoints["AzureWebJobsStorage"].split("BlobEndpoint=")[1].split(";")[0]
        assert requests.get(f"{url}/api/hello/up", timeout=10).status_code == 401
        answer = requests.get(f"{url}/api/hello/up", params={"code": endpoints["CCR_FUNCTION_KEY"]}, timeout=10)
        assert (answer.status_code, answer.text) == (200, "hello up")
        assert port_open(blob_url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "invoked hello trigger=httpTrigger" in output and output.rstrip().endswith("stopped")
    assert endpoints["CCR_FUNCTION_KEY"] not in output
    for service_url in (url, blob_url, endpoints["CCR_KEYVAULT_URL"], endpoints["CCR_LEDGER_URL"]):
        assert not port_open(service_url), service_url
