"""Fixtures for the ACI twin tests: loopback TLS, a bearer token, the twin, the official
management client, and stand-in trainer images built by local_emulator.images."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from local_emulator import images
from local_emulator.aci import AciTwin, skr_sidecar_factory
from shared.credentials import StaticTokenCredential
from tests.aci.stand_in_trainer import write_stand_in
from tests.conftest import wait_until

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "ccr-tests"
LOCATION = "westeurope"


@pytest.fixture
def images_dir(tmp_path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def sidecars():
    return []


@pytest.fixture
def twin(tmp_path, images_dir, tls, token, sidecars, hardware_root):
    real_sidecar = skr_sidecar_factory(hardware_root, str(tls.ca_path), token)

    def factory(policy):
        sidecar = real_sidecar(policy)
        sidecars.append(sidecar)
        return sidecar

    aci = AciTwin(tmp_path / "aci", images_dir, tls.server_context(), token, factory,
                  kill_grace_seconds=2.0).start()
    yield aci
    aci.stop()


@pytest.fixture
def client(twin, tls, token):
    with ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=twin.url,
                                           connection_verify=str(tls.ca_path)) as management:
        yield management


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
    """The shared poll (tests/conftest.py) with the short interval these twin tests want."""
    return wait_until(predicate, timeout, interval)


def sidecar_reachable(url: str) -> bool:
    """The sidecar's server is up. It answers only its own group's uid, so from the test
    process any HTTP answer (403) counts."""
    try:
        requests.get(url + "/status", timeout=5)
        return True
    except requests.ConnectionError:
        return False
