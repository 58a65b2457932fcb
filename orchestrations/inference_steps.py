"""What each step of an inference run does, apart from the Durable plumbing
(orchestrations/inference_workflow.py). Deterministic refusals are returned as `{"ok": False,
"reason"}`; transient errors raise and are retried by the host, as in run_steps.py.

The inference group is the contract's inference image under its own command
(shared/container_group.py `inference_hostdata`): every key it needs must be granted to that
host data - the requester's batch and output keys only to it, the contract's model-state KEK to
it beside the training group - and its outcome is believed only when attested for it."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from orchestrations import deployment, run_steps
from shared import (attested_outcome, azure_clients, inference_requests, key_grants, model_states, settings,
                    storage_names, trainer_resources)
from shared import contract as contracts
from shared.blob_sas import blob_location, trainer_blob_urls
from shared.container_group import build_container_group, inference_hostdata
from shared.contract_store import split_blob_path
from shared.package import PackageError, read_header
from shared.release_policy import policy_from_json
from shared.run_records import RunRecords


def hostdata(payload: dict, contract_digest: str) -> str:
    return inference_hostdata(contracts.inference(payload)["image"], contract_digest,
                              contracts.training_sidecar(payload))


def _request(run: dict) -> inference_requests.Request:
    return inference_requests.Request(**run["request"])


def gather_inference_grants(run: dict) -> dict:
    """The requester's two grants pin this contract's inference group, and the contract's state
    KEK admits it: nothing is deployed before."""
    payload = run_steps.contract_of(run)
    unrunnable = deployment.policy_problem(payload, "inference")
    if unrunnable:
        return {"ok": False, "reason": unrunnable}
    expected, authority = hostdata(payload, run["contract_digest"]), settings.require("CCR_MAA_URL")
    subjects = inference_requests.grant_subjects(payload, _request(run).requester)
    with azure_clients.key_client(subjects[0].key_vault) as vault:
        problems = [run_steps.grant_problem(run["contract_digest"], s, vault, expected) for s in subjects]
    with azure_clients.key_client() as vault:
        try:
            state = vault.get_key(model_states.kek_name(run["contract_digest"])).properties.release_policy
        except ResourceNotFoundError:
            state = None
    if state is None:
        problems.append("the contract's model-state key is missing")
    else:
        problem = run_steps.release_policy_problem(policy_from_json(state.encoded_policy), authority, expected)
        problems.append(f"the contract's model-state key: {problem}" if problem else None)
    reason = next((problem for problem in problems if problem), None)
    return {"ok": False, "reason": reason} if reason else {"ok": True, "hostdata": expected}


def inference_reads(payload: dict, run: dict) -> list[str]:
    """Every blob the inference group may read: the batch, the request, the kept model state and
    the requester's two grants."""
    request = _request(run)
    return [request.batch, inference_requests.request_path(run["contract_digest"], run["run_id"]),
            *model_states.paths(run["contract_digest"], request.model_run_id),
            *(key_grants.grant_path(run["contract_digest"], s.subject)
              for s in inference_requests.grant_subjects(payload, request.requester))]


def deploy_inference(run: dict) -> dict:
    """Write the request, then create the inference group once (a retry finds it). Its spec
    carries SAS URLs: built here only, never logged or returned."""
    record = run_steps.contract_record(run)
    client, resource_group = azure_clients.container_client(), settings.require("CCR_RESOURCE_GROUP")
    group_name = deployment.group_name(run)
    try:
        group = client.container_groups.get(resource_group, group_name)
    except ResourceNotFoundError:
        _ensure_container(storage_names.PREDICTIONS)
        container, name = split_blob_path(inference_requests.request_path(run["contract_digest"], run["run_id"]))
        azure_clients.blob_service().get_blob_client(container, name).upload_blob(_request(run).to_json(),
                                                                                 overwrite=True)
        try:
            group = client.container_groups.begin_create_or_update(resource_group, group_name,
                                                                   _group(run, record)).result()
        except HttpResponseError as error:
            if error.status_code is not None and error.status_code >= 500:
                raise
            return {"ok": False, "container_group": group_name,
                    "reason": f"container group {group_name} was refused: {run_steps.first_line(error)}"}
    if group.provisioning_state == "Failed":
        return {"ok": False, "container_group": group_name, "reason": f"container group {group_name} failed to provision"}
    return {"ok": True, "container_group": group_name}


def _group(run: dict, record: dict):
    payload = record["payload"]
    expiry = datetime.now(timezone.utc) + timedelta(seconds=int(run["deadline_seconds"])) + deployment.SAS_MARGIN
    urls = trainer_blob_urls(azure_clients.blob_service(), inference_reads(payload, run),
                             inference_requests.predictions_path(run["run_id"]), expiry)
    environment = {"CCR_RUN_ID": run["run_id"], "CCR_RUN_NONCE": run["nonce"], "CCR_CONTRACT": record["envelope"],
                   "CCR_BLOB_URLS": json.dumps(urls, sort_keys=True), "CCR_MAA_URL": settings.require("CCR_MAA_URL"),
                   "CCR_EVENTGRID_TOPIC_URL": settings.require("CCR_EVENTGRID_TOPIC_URL"),
                   "CCR_EVENTGRID_KEY": settings.require("CCR_EVENTGRID_KEY"),
                   "CCR_KEYVAULT_URL": settings.require("CCR_KEYVAULT_URL")}
    ca_bundle = settings.ca_bundle()
    if isinstance(ca_bundle, str):
        environment["CCR_CA_BUNDLE"] = ca_bundle
    cpu, memory_gb = trainer_resources.of_training(contracts.training(payload))
    return build_container_group(contracts.inference(payload)["image"], record["digest"], environment,
                                 settings.get("CCR_LOCATION", "westeurope"), cpu=cpu, memory_in_gb=memory_gb,
                                 identity_id=settings.get("CCR_TRAINER_IDENTITY_ID") or None,
                                 registry=settings.get("CCR_TRAINER_REGISTRY") or None,
                                 sidecar=deployment.checked_sidecar(payload, "inference"), workload="inference")


def _ensure_container(container: str) -> None:
    try:
        azure_clients.blob_service().create_container(container)
    except ResourceExistsError:
        pass


def verify_inference_outcome(run: dict, event: dict) -> dict:
    """The outcome, when the attested inference group of this run signed it (no privacy spent:
    predictions of the requester's own rows are post-processing of a released DP model)."""
    payload = run_steps.contract_of(run)
    try:
        outcome = attested_outcome.verify(event, run["run_id"], run["nonce"], hostdata(payload, run["contract_digest"]),
                                          settings.require("CCR_MAA_URL"), 0.0, settings.ca_bundle())
    except attested_outcome.OutcomeRejected as rejected:
        return {"ok": False, "reason": str(rejected)}
    return {"ok": True, "outcome": outcome}


def finish_inference(run: dict, outcome: dict) -> dict:
    """Record the inference like a run: who asked, on which batch, how many rows, with which
    model; a success only with its predictions in place under the requester's output key."""
    payload, request = run_steps.contract_of(run), _request(run)
    predictions = azure_clients.blob_service().get_blob_client(
        *split_blob_path(inference_requests.predictions_path(run["run_id"])))
    if outcome["status"] == "succeeded":
        problem = _predictions_problem(predictions, payload, request, outcome)
        if problem:
            outcome = {"status": "failed", "phase": "inferring", "reason": f"predictions are {problem}"}
    summary = {"run_id": run["run_id"], "contract_id": run["contract_id"], "workload": "inference",
               "status": outcome["status"], "failed_phase": None if outcome["status"] == "succeeded" else outcome.get("phase"),
               "reason": outcome.get("reason"), "requester": request.requester, "batch": request.batch,
               "model_run_id": request.model_run_id,
               "output_blob": blob_location(predictions.url) if outcome["status"] == "succeeded" else None,
               **{k: outcome.get(k) for k in ("rows", "batch_commitment", "output_blake3", "model_state_sha256")}}
    RunRecords(azure_clients.blob_service()).finish(run["run_id"], summary)
    return summary


def _predictions_problem(blob, payload: dict, request, outcome: dict) -> str | None:
    try:
        header = read_header(run_steps.package_head(blob))
    except ResourceNotFoundError:
        return "missing"
    except PackageError as error:
        return f"invalid (not a valid package: {error})"
    if header.key_id != inference_requests.key_id(payload["contract_id"], request.requester, inference_requests.OUTPUT):
        return "invalid (not encrypted under the requester's output key)"
    if outcome.get("output_blake3") != header.manifest.digest:
        return "invalid (its digest is not the one the inference reported)"
    return None
