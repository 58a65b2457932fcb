"""Fixtures shared by every test folder.

- `azurite_service` (session): Azurite from node_modules on free loopback ports with a temp
  data folder; `azurite` (session): its connection string. Stopped at the end of the session.
- `function_host` (function): a factory starting the local Functions host as a subprocess,
  `function_host(app_dir, env={...}, hub="name")` -> HostProcess (.url, .function_key,
  .system_key, .eventgrid_key, .master_key, .env, .logs(), .stop(), .kill(), .start() again on the
  same port). Every host a test started is stopped when the test ends. Give each test its own
  task hub (`hub=`, default a fresh random name) so tests sharing the session's Azurite do not
  see each other's work.
- `tls` (session), `token`, `hardware_root` (session), `maa`: the loopback CA, a twin's bearer
  token, the simulated SEV-SNP root and the attestation twin trusting it.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from local_emulator import tls as loopback_tls
from local_emulator.attestation import MaaTwin
from local_emulator.azurite import Azurite
from local_emulator.sevsnp import HardwareRoot
from local_emulator.stack import HostProcess as StackHostProcess

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The suite runs against the local twins: the emulators' settings profile (shared/settings.py).
# Tests of the Azure profile clear it (tests/infra/test_azure_settings.py).
os.environ.setdefault("CCR_LOCAL_PROFILE", "1")


@pytest.fixture(scope="session")
def azurite_service(tmp_path_factory):
    service = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def azurite(azurite_service) -> str:
    return azurite_service.connection_string


class HostProcess(StackHostProcess):
    """The host for one test app folder, on a free loopback port, with fresh keys and its own
    task hub."""

    def __init__(self, app_dir: Path, connection_string: str, env: dict | None = None, hub: str | None = None,
                 start_timeout: float = 60.0):
        self.function_key = secrets.token_urlsafe(24)
        self.system_key = secrets.token_urlsafe(24)
        self.eventgrid_key = secrets.token_urlsafe(24)
        self.blobs_key = secrets.token_urlsafe(24)
        self.master_key = secrets.token_urlsafe(24)
        self.hub = hub or "h" + secrets.token_hex(6)
        super().__init__(app_dir, {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
            "AzureWebJobsStorage": connection_string, "CCR_STORAGE_CONNECTION": connection_string,
            "CCR_FUNCTION_KEY": self.function_key, "CCR_DURABLE_SYSTEM_KEY": self.system_key,
            "CCR_EVENTGRID_SYSTEM_KEY": self.eventgrid_key, "CCR_BLOBS_EXTENSION_KEY": self.blobs_key,
            "CCR_MASTER_KEY": self.master_key,
            "CCR_TASK_HUB": self.hub,
            "CCR_HOST_LEASE_SECONDS": "4", "CCR_BLOB_POLL_SECONDS": "0.2",
            **(env or {})}, start_timeout=start_timeout)


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """The emulator's loopback CA and server certificate (local_emulator/tls.py)."""
    return loopback_tls.load_or_create(tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def token() -> str:
    """The bearer token a twin requires of its callers."""
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def hardware_root(tmp_path_factory) -> HardwareRoot:
    return HardwareRoot.load_or_create(tmp_path_factory.mktemp("hw"))


@pytest.fixture
def maa(tmp_path, tls, hardware_root):
    twin = MaaTwin(tmp_path / "maa", tls, [hardware_root.public_pem]).start()
    yield twin
    twin.stop()


@pytest.fixture
def function_host(azurite):
    started: list[HostProcess] = []

    def start(app_dir: Path, env: dict | None = None, hub: str | None = None) -> HostProcess:
        host = HostProcess(app_dir, azurite, env, hub).start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout:.0f} s")
        time.sleep(interval)


# The longest files (whole runs through a local stack) first: `make test` spreads files over two
# pytest-xdist workers, and a long file left for last would run alone at the end.
LONG_FIRST = ("tests/run/", "tests/guide/")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_FIRST))   # stable: otherwise as collected
