"""Shared fixtures for the trainer tests: the COVID inputs, Azurite, an Event Grid topic, the
parties' DID host (HTTPS on loopback, its own CA)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.pipeline import JoinSpec
from local_emulator import covid_reference as covid_model
from local_emulator import tls as loopback_tls
from tests.trainer.harness import EVENT_KEY, DidHost, EventGridTopic

COVID_DATA = covid_model.COVID_DATA


@pytest.fixture(scope="session")
def covid_paths() -> dict[str, Path]:
    return {name: COVID_DATA / file for name, file in covid_model.RAW_FILES.items()}


@pytest.fixture(scope="session")
def covid_spec() -> JoinSpec:
    return JoinSpec.from_dict(covid_model.covid_join_spec())


@pytest.fixture(scope="session")
def azurite(azurite_service):
    """The session's Azurite itself (these tests want its `.connection_string`)."""
    return azurite_service


@pytest.fixture
def topic():
    server = EventGridTopic(EVENT_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def did_host(tmp_path_factory):
    """The parties' did:web documents, served over HTTPS on 127.0.0.1 (trust `did_host.ca_bundle`)."""
    host = DidHost(loopback_tls.load_or_create(tmp_path_factory.mktemp("did-host"))).start()
    yield host
    host.stop()
