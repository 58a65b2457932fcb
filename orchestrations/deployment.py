"""The trainer container group of a run, built the same way for the key-policy check, the
deployment and the cleanup, so all three agree on its name and its CCE policy hash."""
from __future__ import annotations

import json
from dataclasses import dataclass

from azure.mgmt.containerinstance.models import ContainerGroup

from shared import settings
from shared.container_group import TRAINER_CONTAINER_NAME, build_container_group, trainer_hostdata


@dataclass(frozen=True)
class TrainerDeployment:
    group_name: str
    hostdata: str
    container_group: ContainerGroup
    trainer_container_name: str = TRAINER_CONTAINER_NAME


def _environment(run: dict, payload: dict) -> dict[str, str]:
    environment = {
        "CCR_RUN_ID": run["run_id"],
        "CCR_CONTRACT": json.dumps(payload, sort_keys=True),
        "CCR_STORAGE_CONNECTION": settings.storage_connection(),
        "CCR_MAA_URL": settings.require("CCR_MAA_URL"),
        "CCR_KEYVAULT_URL": settings.require("CCR_KEYVAULT_URL"),
        "CCR_EVENTGRID_TOPIC_URL": settings.require("CCR_EVENTGRID_TOPIC_URL"),
        "CCR_EVENTGRID_KEY": settings.require("CCR_EVENTGRID_KEY"),
    }
    if "epsilon_budget" in run:
        environment["CCR_EPSILON_BUDGET"] = repr(float(run["epsilon_budget"]))
    ca_bundle = settings.ca_bundle()
    if isinstance(ca_bundle, str):
        environment["CCR_CA_BUNDLE"] = ca_bundle
    return environment


def trainer_deployment(run: dict, payload: dict) -> TrainerDeployment:
    image = payload["pipeline"]["trainer_image"]
    group = build_container_group(image, _environment(run, payload), settings.get("CCR_LOCATION", "westeurope"))
    return TrainerDeployment(group_name=f"ccr-{run['run_id']}", hostdata=trainer_hostdata(image),
                             container_group=group)
