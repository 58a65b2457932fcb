"""The trainer container group of a run. Its name and the hostdata of its CCE policy are cheap
and derived the same way by the grant check, the deployment and the cleanup, so all three
agree; the full spec, which carries the run's SAS URLs, is built only to deploy it.

The group's policy requires CCR_CONTRACT_DIGEST = this contract's digest, so its host data
(what every grant's KEK pins) is this contract's alone; the trainer receives the signed
envelope itself (CCR_CONTRACT) and checks it against that digest before asking for any key.

The group runs the operator's SKR sidecar (`CCR_SKR_SIDECAR_IMAGE`, shared/skr_sidecar.py); a
contract written for another sidecar, or whose pinned policy template is not the one this
deployment would run, is refused by `policy_problem` before anything is reserved or deployed."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from azure.mgmt.containerinstance.models import ContainerGroup

from shared import (azure_clients, continuation, key_grants, model_states, settings, skr_sidecar, storage_names,
                    trainer_resources)
from shared.blob_sas import trainer_blob_urls
from shared.container_group import build_container_group, policy_template_sha256, training_hostdata
from shared.contract import inference, keeps_model_state, training, training_sidecar

# The SAS outlives the run's deadline by this much: the deadline timer starts only once the
# group is provisioned (confidential ACI can take many minutes, plus activity retries), and
# clocks differ. The group is deleted at the deadline anyway.
SAS_MARGIN = timedelta(hours=1)


def group_name(run: dict) -> str:
    return f"ccr-{run['run_id']}"


def hostdata(payload: dict, contract_digest: str) -> str:
    """What every grant's KEK must pin: this contract's trainer group."""
    return training_hostdata(training(payload)["image"], contract_digest, training_sidecar(payload))


def policy_problem(payload: dict, workload: str = "training") -> str | None:
    """Why this deployment cannot run the contract's `workload` group as the contract pins it,
    or None: the contract was written for another SKR sidecar than `CCR_SKR_SIDECAR_IMAGE` (both
    its groups run the training workload's), or the workload's policy_template_sha256 is not the
    template of its image and sidecar (the parties would have granted keys to host data no group
    of ours reports)."""
    try:
        configured = skr_sidecar.configured()
    except skr_sidecar.SidecarError as error:
        return str(error)
    if training_sidecar(payload) != configured:
        return (f"the contract was written for SKR sidecar {training_sidecar(payload).image}, but this deployment "
                f"runs {configured.image} ({skr_sidecar.SIDECAR_IMAGE_SETTING}): write the contract with "
                "`ccr contract new` under the same setting, or set it to the contract's sidecar")
    terms = training(payload) if workload == "training" else inference(payload)
    if terms["policy_template_sha256"] != policy_template_sha256(terms["image"], configured, workload):
        return (f"the contract's {workload} policy_template_sha256 is not the policy template of its image with "
                f"SKR sidecar {configured.image} ({skr_sidecar.SIDECAR_IMAGE_SETTING}): no group this deployment "
                "runs would match it")
    return None


def trainer_reads(payload: dict, contract_digest: str, run: dict | None = None) -> list[str]:
    """Every blob the trainer may read: the run's packages and their grants; for a continued run
    also what it continues (shared/continuation.py) and the model state it starts from."""
    continued = continuation.of_run(run or {})
    reads = [item["blob"] for item in continuation.run_inputs(payload, continued)] + \
        [key_grants.grant_path(contract_digest, s.subject) for s in key_grants.subjects(payload)]
    if continued is not None:
        reads += [model_states.continuation_path(contract_digest, run["run_id"]),
                  *model_states.paths(contract_digest, continued.previous_run_id)]
    return reads


def trainer_container_group(run: dict, record: dict) -> ContainerGroup:
    """The full spec: secrets (SAS URLs, Event Grid key) go in as secure values; the trainer's CPU
    and memory are the contract's (or the defaults)."""
    payload = record["payload"]
    cpu, memory_gb = trainer_resources.of_training(training(payload))
    return build_container_group(training(payload)["image"], record["digest"], _environment(run, record),
                                 settings.get("CCR_LOCATION", "westeurope"), cpu=cpu, memory_in_gb=memory_gb,
                                 identity_id=settings.get("CCR_TRAINER_IDENTITY_ID") or None,
                                 registry=settings.get("CCR_TRAINER_REGISTRY") or None,
                                 sidecar=checked_sidecar(payload))


def checked_sidecar(payload: dict, workload: str = "training") -> skr_sidecar.SidecarSpec:
    """The configured sidecar, which must be the contract's (checked first: `validate_inputs`,
    `gather_inference_grants`)."""
    reason = policy_problem(payload, workload)
    if reason:
        raise skr_sidecar.SidecarError(reason)
    return skr_sidecar.configured()


def trainer_keeps(payload: dict, contract_digest: str, run_id: str) -> list[str]:
    """The blobs the trainer creates for the clean room itself: the model state and its wrapped
    data key of a contract that keeps it (continued training or inference: shared/model_states.py);
    none otherwise."""
    return model_states.paths(contract_digest, run_id) if keeps_model_state(payload) else []


def _environment(run: dict, record: dict) -> dict[str, str]:
    expiry = datetime.now(timezone.utc) + timedelta(seconds=int(run["deadline_seconds"])) + SAS_MARGIN
    urls = trainer_blob_urls(azure_clients.blob_service(), trainer_reads(record["payload"], record["digest"], run),
                             storage_names.output_path(run["run_id"]), expiry,
                             kept=trainer_keeps(record["payload"], record["digest"], run["run_id"]))
    environment = {
        "CCR_RUN_ID": run["run_id"],
        "CCR_RUN_NONCE": run["nonce"],
        "CCR_CONTRACT": record["envelope"],
        "CCR_BLOB_URLS": json.dumps(urls, sort_keys=True),
        "CCR_MAA_URL": settings.require("CCR_MAA_URL"),
        "CCR_EVENTGRID_TOPIC_URL": settings.require("CCR_EVENTGRID_TOPIC_URL"),
        "CCR_EVENTGRID_KEY": settings.require("CCR_EVENTGRID_KEY"),
    }
    if keeps_model_state(record["payload"]):  # where the contract's state KEK is (shared/model_states.py)
        environment["CCR_KEYVAULT_URL"] = settings.require("CCR_KEYVAULT_URL")
    ca_bundle = settings.ca_bundle()
    if isinstance(ca_bundle, str):
        environment["CCR_CA_BUNDLE"] = ca_bundle
    return environment
