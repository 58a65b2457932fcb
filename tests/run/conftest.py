"""One whole local stack (Azurite, every twin, the Functions host running function_app.py)
per test module; each test plays its own contract id so runs do not interfere. A run is named
by its contract's id and digest (`scenario.run_id`)."""
from __future__ import annotations

import itertools

import pytest
from azure.storage.blob import BlobServiceClient

from local_emulator.covid_scenario import CovidScenario, _environment
from local_emulator.stack import RESOURCE_GROUP, Stack
from shared import azure_clients
from shared.run_records import RunRecords

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack"), fast_retries=True) as running:
        yield running


@pytest.fixture
def scenario_factory(stack, tmp_path, request):
    made = []

    def make(**options) -> CovidScenario:
        contract_id = f"{request.node.name[:20].replace('_', '-').strip('-')}-{next(_ids)}".lower()
        scenario = CovidScenario(stack, tmp_path / contract_id, contract_id=contract_id, echo=lambda _: None,
                                 **options)
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.close()


def group_name(run_id: str) -> str:
    return f"ccr-{run_id}"


def groups_created(stack: Stack, run_id: str) -> int:
    """How many container groups the ACI twin ever created for run `run_id`."""
    return stack.aci.stats()["groups"].get(_group_id(stack, run_id), 0)


def _group_id(stack: Stack, run_id: str) -> str:
    return (f"/subscriptions/{stack.settings['CCR_SUBSCRIPTION_ID']}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.ContainerInstance/containerGroups/{group_name(run_id)}")


def remaining_groups(stack: Stack) -> list[str]:
    with _environment(stack.settings):
        client = azure_clients.container_client()
        return [group.name for group in client.container_groups.list_by_resource_group(RESOURCE_GROUP)]


def run_record(stack: Stack, run_id: str) -> dict | None:
    """The run record as the operator reads it (the account connection); parties see runs
    through the status API as themselves (`scenario.run_record`, `ccr runs`)."""
    return RunRecords(BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])).get(run_id)

