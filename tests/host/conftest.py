"""The test app under tests/host/app, hosted by the local host against the session's Azurite."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.conftest import HostProcess, wait_until

APP_DIR = Path(__file__).parent / "app"


@pytest.fixture
def record_dir(tmp_path) -> Path:
    folder = tmp_path / "records"
    folder.mkdir()
    return folder


@pytest.fixture
def host(function_host, record_dir):
    return function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(record_dir)})


@pytest.fixture(scope="module")
def shared_records(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def shared_host(azurite, shared_records):
    """One host for a whole module (starting one costs seconds); tests tag what they record."""
    process = HostProcess(APP_DIR, azurite, env={"CCR_TEST_RECORD_DIR": str(shared_records)}).start()
    yield process
    process.stop()


def records(record_dir: Path, kind: str, tag: str | None = None) -> list[str]:
    """Lines the test app recorded (optionally only those starting with `tag:`)."""
    path = record_dir / f"{kind}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if tag is None or line.startswith(tag + ":")]


def start(host, orchestrator: str, payload=None, instance_id: str | None = None) -> dict:
    """Start through the app's own HTTP starter (client.start_new + check-status response)."""
    params = {"code": host.function_key, **({"id": instance_id} if instance_id else {})}
    response = requests.post(f"{host.url}/api/orchestrators/{orchestrator}", params=params,
                             json=payload, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def status(links: dict, **params) -> dict:
    return requests.get(links["statusQueryGetUri"], params=params, timeout=30).json()


def wait_done(links: dict, timeout: float = 30.0) -> dict:
    def finished():
        body = status(links)
        return body if body["runtimeStatus"] not in ("Pending", "Running", "Suspended") else None
    return wait_until(finished, timeout, 0.1, "orchestration finished")


def manage(host, op: str, instance_id: str, body: dict | None = None) -> requests.Response:
    return requests.post(f"{host.url}/api/manage/{op}/{instance_id}", params={"code": host.function_key},
                         json=body, timeout=30)
