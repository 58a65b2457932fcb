"""Shared fixtures for the trainer tests: the raw COVID tables joined the way the contract says."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.pipeline import JoinSpec
from tests.fixtures import covid_model

COVID_DATA = Path("/work/shared/data/covid")


@pytest.fixture(scope="session")
def covid_paths() -> dict[str, Path]:
    return {name: COVID_DATA / file for name, file in covid_model.RAW_FILES.items()}


@pytest.fixture(scope="session")
def covid_spec() -> JoinSpec:
    return JoinSpec.from_dict(covid_model.covid_join_spec())
