"""Fixtures for the ACI twin tests: loopback TLS, a bearer token, the twin, the official
management client, and stand-in trainer images built by local_emulator.images."""
from __future__ import annotations

import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from local_emulator import images, tls as loopback_tls
from local_emulator.aci import AciTwin
from shared.credentials import StaticTokenCredential
from shared.cce_policy import hostdata_of
from tests.aci.stand_in_trainer import write_stand_in

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "ccr-tests"
LOCATION = "westeurope"


class HostdataSidecar:
    """Until local_emulator/skr_sidecar.py lands: a loopback server that tells the trainer
    which hostdata its reports would carry (GET /stand-in/hostdata)."""

    def __init__(self, cce_policy_b64: str):
        self.hostdata = hostdata_of(cce_policy_b64)
        self.stopped = False
        sidecar = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = sidecar.hostdata.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if not self.stopped:
            self._server.shutdown()
            self._server.server_close()
            self.stopped = True


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """The emulator's loopback CA and server certificate (local_emulator/tls.py)."""
    return loopback_tls.load_or_create(tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def images_dir(tmp_path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def sidecars():
    return []


@pytest.fixture
def twin(tmp_path, images_dir, tls, token, sidecars):
    def factory(policy):
        sidecar = HostdataSidecar(policy)
        sidecars.append(sidecar)
        return sidecar

    aci = AciTwin(tmp_path / "aci", images_dir, tls.server_context(), token, factory,
                  kill_grace_seconds=2.0).start()
    yield aci
    aci.stop()


@pytest.fixture
def client(twin, tls, token):
    return ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=twin.url,
                                             connection_verify=str(tls.ca_path))


@pytest.fixture
def stand_in_image(tmp_path, images_dir):
    """A stand-in trainer image (`ccr-trainer@sha256:...`), built the way the real one is."""
    source = write_stand_in(tmp_path / "stand-in-src")
    return images.build_image(source, packages=("trainer_container",), images_dir=images_dir)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met within %.0f s" % timeout)
