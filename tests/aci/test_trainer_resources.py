"""The trainer's CPU and memory: the contract's `workloads.training.resources` (or the defaults)
reach the container group, and a group beyond a confidential group's maximum is refused by the
twin as ARM refuses it (409 ServiceUnavailable, nothing created)."""
from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared import trainer_resources
from shared.container_group import build_container_group
from tests.aci.conftest import LOCATION, RESOURCE_GROUP

pytestmark = pytest.mark.timeout(120)

CONTRACT = "c0" * 32
ENVIRONMENT = {"CCR_RUN_ID": "run-0123456789abcdef", "CCR_CONTRACT": "{}"}


def _requests(container) -> tuple[float, float]:
    return container.resources.requests.cpu, container.resources.requests.memory_in_gb


def test_the_group_carries_the_contracts_resources(client, stand_in_image):
    cpu, memory_gb = trainer_resources.of_training({"resources": {"cpu": 2, "memory_gb": 4.4}})
    spec = build_container_group(stand_in_image.ref, CONTRACT, ENVIRONMENT, LOCATION, cpu=cpu, memory_in_gb=memory_gb)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-sized", spec).result()
    trainer, sidecar = client.container_groups.get(RESOURCE_GROUP, "run-sized").containers
    assert _requests(trainer) == (2.0, 4.4)
    assert _requests(sidecar) == (trainer_resources.SIDECAR_CPU, trainer_resources.SIDECAR_MEMORY_GB)
    client.container_groups.begin_delete(RESOURCE_GROUP, "run-sized").result()


def test_without_resources_the_trainer_gets_the_defaults():
    spec = build_container_group("ccr-trainer@sha256:" + "ab" * 32, CONTRACT, ENVIRONMENT, LOCATION,
                                 *trainer_resources.of_training({}))
    assert _requests(spec.containers[0]) == (trainer_resources.DEFAULT_CPU, trainer_resources.DEFAULT_MEMORY_GB)


def test_the_builder_refuses_what_a_contract_could_not_ask_for():
    with pytest.raises(ValueError, match="cpu 4 exceeds 3.5"):
        build_container_group("ccr-trainer@sha256:" + "ab" * 32, CONTRACT, ENVIRONMENT, LOCATION, cpu=4)


def test_a_group_beyond_the_confidential_maximum_is_refused_and_nothing_created(client, twin, stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, ENVIRONMENT, LOCATION, cpu=3.5, memory_in_gb=15.5)
    spec.containers[0].resources.requests.memory_in_gb = 16   # + the sidecar's 0.5: 16.5 GB
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-huge", spec).result()
    assert refused.value.status_code == 409 and refused.value.error.code == "ServiceUnavailable"
    assert "Resource requested: '4' CPU '16.5' GB memory" in str(refused.value)
    with pytest.raises(ResourceNotFoundError):
        client.container_groups.get(RESOURCE_GROUP, "run-huge")
    assert twin.stats()["created"] == 0
