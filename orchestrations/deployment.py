"""The trainer container group of a run. Its name and the hostdata of its CCE policy are cheap
and derived the same way by the key-policy check, the deployment and the cleanup, so all three
agree; the full spec, which carries the run's SAS URLs, is built only to deploy it."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from azure.mgmt.containerinstance.models import ContainerGroup

from shared import azure_clients, settings, storage_names
from shared.blob_sas import trainer_blob_urls
from shared.container_group import build_container_group, trainer_hostdata
from shared.contract_store import contract_inputs

# The SAS outlives the run's deadline by this much: the deadline timer starts only once the
# group is provisioned (confidential ACI can take many minutes, plus activity retries), and
# clocks differ. The group is deleted at the deadline anyway.
SAS_MARGIN = timedelta(hours=1)


def group_name(run: dict) -> str:
    return f"ccr-{run['run_id']}"


def hostdata(payload: dict) -> str:
    """What the keys' release policies must pin for this contract's trainer image."""
    return trainer_hostdata(payload["pipeline"]["trainer_image"])


def trainer_container_group(run: dict, payload: dict) -> ContainerGroup:
    """The full spec: secrets (SAS URLs, Event Grid key) go in as secure values."""
    return build_container_group(payload["pipeline"]["trainer_image"], _environment(run, payload),
                                 settings.get("CCR_LOCATION", "westeurope"))


def _environment(run: dict, payload: dict) -> dict[str, str]:
    expiry = datetime.now(timezone.utc) + timedelta(seconds=int(run["deadline_seconds"])) + SAS_MARGIN
    urls = trainer_blob_urls(azure_clients.blob_service(), [item["blob"] for item in contract_inputs(payload)],
                             storage_names.output_path(run["run_id"]), expiry)
    environment = {
        "CCR_RUN_ID": run["run_id"],
        "CCR_CONTRACT": json.dumps(payload, sort_keys=True),
        "CCR_BLOB_URLS": json.dumps(urls, sort_keys=True),
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
