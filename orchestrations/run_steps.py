"""What each step of a run does, apart from the Durable plumbing (see activities.py).

Validation failures are returned as `{"ok": False, "reason": ...}` rather than raised, so
the orchestration does not retry a deterministic failure; transient errors (network,
storage) raise and are retried by the host.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient

from orchestrations import deployment
from shared import (attested_outcome, attested_progress, azure_clients, budget_declaration, continuation, key_grants,
                    model_states, settings, storage_names)
from shared import contract as contracts
from shared.container_group import TRAINER_CONTAINER_NAME
from shared.contract_store import ContractStore, split_blob_path
from shared.package import PackageError, read_header
from shared.privacy_budget import PrivacyBudget
from shared.release_policy import (PolicyNotSatisfied, ReleasePolicyError, authorities, evaluate,
                                   normalize_authority)
from shared.run_records import RunRecords

log = logging.getLogger(__name__)

HEADER_PROBE_BYTES = 1 << 20
LOG_TAIL_LINES = 50


def contract_record(run: dict) -> dict:
    """The accepted contract of this run: payload, digest and the signed envelope."""
    record = ContractStore(azure_clients.blob_service()).get(run["contract_id"], run["contract_digest"])
    if record is None or record["digest"] != run["contract_digest"]:
        raise RuntimeError(f"accepted contract {run['contract_id']} not found or changed")
    return record


def contract_of(run: dict) -> dict:
    return contract_record(run)["payload"]


# --- 0. a continued run waits for the model it starts from ----------------------------------

def previous_model_state(run: dict) -> dict:
    """Where the run a continued run starts from stands: `{"kept": True}` once it finished with a
    kept model state, `{"kept": False, "finished": True}` if it finished without one, else
    `{"kept": False, "finished": False}` (still going: ask again later)."""
    previous = RunRecords(azure_clients.blob_service()).get(continuation.of_run(run).previous_run_id) or {}
    return {"kept": bool(previous.get("model_state_sha256")), "finished": bool(previous.get("finished"))}


# --- 1. validate inputs ------------------------------------------------------------------

def validate_inputs(run: dict) -> dict:
    """Each input exists, its header parses, names the contract's data key and carries the
    contract's manifest digest (checked concurrently). Reserves nothing: consent is not
    checked yet. First of all, this deployment must be able to run the trainer group the
    contract pins (its SKR sidecar and policy template: `deployment.policy_problem`)."""
    payload = contract_of(run)
    reason = deployment.policy_problem(payload)
    if reason:
        return {"ok": False, "reason": reason}
    inputs = continuation.run_inputs(payload, continuation.of_run(run))
    with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
        problems = list(pool.map(_input_problem, inputs))
    reason = next((problem for problem in problems if problem), None)
    return {"ok": False, "reason": reason} if reason else {"ok": True}


def _input_problem(item: dict) -> str | None:
    container, name = split_blob_path(item["blob"])
    try:
        head = package_head(azure_clients.blob_service().get_blob_client(container, name))
    except ResourceNotFoundError:
        return f"input {item['blob']} is missing"
    try:
        header = read_header(head)
    except PackageError as error:
        return f"input {item['blob']} is not a valid package: {error}"
    if header.key_id != item["key_id"]:
        return f"input {item['blob']} does not match the contract (encrypted under another data key)"
    if not header.manifest.matches(item):
        return f"input {item['blob']} does not match the contract (manifest digest differs)"
    return None


def package_head(blob: BlobClient) -> bytes:
    """The first bytes of a package blob: enough for its header (see shared/package.py)."""
    try:
        return blob.download_blob(offset=0, length=HEADER_PROBE_BYTES).readall()
    except HttpResponseError as error:
        if error.status_code == 416:  # an empty blob has no range to read
            return b""
        raise


# --- 2. gather the key grants ("import keys") ----------------------------------------------

def gather_key_grants(run: dict) -> dict:
    """Every party has granted every key the run needs to THIS contract: for each dataset, the
    model and the output key, a KEK in the grantor's vault whose release policy admits only
    this contract's trainer group, and the data key wrapped under it. The parties import
    their keys themselves (a grant is part of their consent); this step gathers and checks
    them all before anything is reserved or deployed: each vault's grants over one client
    (one auth challenge, one connection), the vaults concurrently."""
    payload = contract_of(run)
    expected = deployment.hostdata(payload, run["contract_digest"])
    by_vault: dict[str, list] = {}
    for subject in key_grants.subjects(payload):
        by_vault.setdefault(subject.key_vault, []).append(subject)

    def check_vault(subjects: list) -> list:
        with azure_clients.key_client(subjects[0].key_vault) as vault:
            return [grant_problem(run["contract_digest"], s, vault, expected) for s in subjects]

    with ThreadPoolExecutor(max_workers=len(by_vault)) as pool:
        problems = [p for found in pool.map(check_vault, by_vault.values()) for p in found]
    reason = next((problem for problem in problems if problem), None)
    return {"ok": False, "reason": reason} if reason else {"ok": True, "hostdata": expected}


def grant_problem(contract_digest: str, subject: key_grants.GrantSubject, vault, expected: str) -> str | None:
    """Why this grant does not hold for this contract's trainer group, or None."""
    kek = key_grants.kek_name(contract_digest, subject.subject)
    whose = f"{subject.label} (granted by {subject.grantor})"
    try:
        key = vault.get_key(kek)
    except ResourceNotFoundError:
        return f"no key grant for {whose} under this contract: its key-encryption key is not in {subject.key_vault}"
    policy = key.properties.release_policy
    if policy is None or not key.properties.exportable:
        return f"key grant for {whose} has no secure key release policy"
    problem = release_policy_problem(json.loads(policy.encoded_policy), settings.require("CCR_MAA_URL"), expected)
    if problem:
        return f"key grant for {whose}: {problem}"
    container, name = split_blob_path(key_grants.grant_path(contract_digest, subject.subject))
    try:
        wrapped = azure_clients.blob_service().get_blob_client(container, name).download_blob().readall()
        key_grants.check_header(wrapped.decode("ascii", "replace"), kek, subject.key_id)
    except ResourceNotFoundError:
        return f"no key grant for {whose} under this contract: the wrapped data key is missing"
    except key_grants.GrantError as error:
        return f"key grant for {whose} is invalid: {error}"
    return None


_PINNED_CLAIMS = {"x-ms-attestation-type": ("sevsnpvm", "sgx"),
                  "x-ms-compliance-status": ("azure-compliant-uvm", "not-compliant"),
                  "x-ms-sevsnpvm-is-debuggable": (False, True)}


def release_policy_problem(policy: dict, authority: str, hostdata: str) -> str | None:
    """Why this policy does not bind the key to our exact container group, or None.

    Judged by behaviour with the same evaluator Key Vault's twin uses: the claims of the
    group we deploy must satisfy it, and changing any pinned claim (hostdata, debuggable,
    attestation type, compliance) or the authority must not."""
    expected = {claim: good for claim, (good, _) in _PINNED_CLAIMS.items()}
    expected["x-ms-sevsnpvm-hostdata"] = hostdata
    try:
        if any(normalize_authority(a) != normalize_authority(authority) for a in authorities(policy)):
            return "its release policy trusts an attestation authority other than ours"
        evaluate(policy, authority, expected)
    except ReleasePolicyError as error:
        return f"its release policy is invalid: {error}"
    except PolicyNotSatisfied:
        return "its release policy does not admit this contract's trainer group (hostdata differs)"
    variations = {claim: bad for claim, (_, bad) in _PINNED_CLAIMS.items()}
    variations["x-ms-sevsnpvm-hostdata"] = "0" * 64
    for claim, bad in variations.items():
        try:
            evaluate(policy, authority, {**expected, claim: bad})
            return f"its release policy does not pin {claim}"
        except PolicyNotSatisfied:
            pass
    return None


# --- 3. reserve the privacy budget (only after consent) ------------------------------------

def reserve_privacy_budget(run: dict) -> dict:
    """Reserve, for each dataset's population (provider DID + dataset name), exactly the run's
    planned epsilon (the smallest any dataset asks: the trainer trains at exactly that, and
    refuses a training config asking another) and the contract's delta, if the provider's
    declared lifetime budget still allows it. Runs only after every grant is verified: a
    contract a provider never signed cannot charge its budget."""
    payload = contract_of(run)
    budget = PrivacyBudget(azure_clients.blob_service())
    delta = float(payload["privacy"]["delta"])
    planned = min(float(d["epsilon"]) for _, d in contracts.datasets(payload))
    reserved = []
    for (provider, dataset), identities in zip(contracts.datasets(payload), charged_populations(payload, run),
                                               strict=True):
        declared = contracts.declared_budget(dataset)  # its signature was verified with the contract's
        pinned = {"epsilon": declared["epsilon"], "delta": declared["delta"],
                  "digest": budget_declaration.digest(dataset["budget"])}
        refusal = budget.reserve(identities[0], run["run_id"], pinned, planned, delta) if len(identities) == 1 \
            else budget.reserve_each(identities, run["run_id"], pinned, planned, delta)  # names which refused
        if refusal:
            for earlier in reserved:  # all or nothing
                for identity in earlier:
                    budget.release(identity, run["run_id"])
            return {"ok": False, "reason": f"privacy budget of dataset {dataset['name']}: {refusal}"}
        reserved.append(identities)
    return {"ok": True, "epsilon": planned}


def charged_populations(payload: dict, run: dict) -> list[tuple[str, ...]]:
    """For each dataset of the contract (in order), the populations a run charges: its own, or
    for a continued run's new version those its provider's declarations place it in
    (shared/version_budget.py, computed from the verified declarations at admission)."""
    continued = continuation.of_run(run)
    return [continued.populations if continued and (provider, dataset["name"]) == (continued.provider, continued.dataset)
            else (contracts.dataset_identity(provider, dataset),) for provider, dataset in contracts.datasets(payload)]


# --- 3. deploy the trainer ------------------------------------------------------------------

def deploy_trainer(run: dict) -> dict:
    """Create the confidential container group, once: a retry finds it and leaves it.
    A group the platform refuses (e.g. an image that does not match its digest) is a
    failed run, not something to retry. The spec carries the trainer's SAS URLs: it is built
    here only, and never logged or returned."""
    record = contract_record(run)
    client = azure_clients.container_client()
    group_name = deployment.group_name(run)
    resource_group = settings.require("CCR_RESOURCE_GROUP")
    try:
        group = client.container_groups.get(resource_group, group_name)
        log.info("container group %s already exists; not creating it again", group_name)
    except ResourceNotFoundError:
        _ensure_containers()  # the trainer's create-only SAS cannot create them
        _write_continuation(run, record["digest"])
        try:
            group = client.container_groups.begin_create_or_update(
                resource_group, group_name, deployment.trainer_container_group(run, record)).result()
        except HttpResponseError as error:
            if error.status_code is not None and error.status_code >= 500:
                raise
            return {"ok": False, "container_group": group_name,
                    "reason": f"container group {group_name} was refused: {first_line(error)}"}
        log.info("created container group %s", group_name)
    if group.provisioning_state == "Failed":
        return {"ok": False, "container_group": group_name,
                "reason": f"container group {group_name} failed to provision"}
    return {"ok": True, "container_group": group_name,
            "hostdata": deployment.hostdata(record["payload"], record["digest"])}


def _write_continuation(run: dict, contract_digest: str) -> None:
    """What a continued run's trainer trains on and starts from (it checks every field)."""
    continued = continuation.of_run(run)
    if continued is not None:
        container, name = split_blob_path(model_states.continuation_path(contract_digest, run["run_id"]))
        azure_clients.blob_service().get_blob_client(container, name).upload_blob(
            json.dumps(continued.to_dict(), sort_keys=True).encode(), overwrite=True)


def _ensure_containers() -> None:
    for container in (storage_names.OUTPUTS, storage_names.MODEL_STATES):
        try:
            azure_clients.blob_service().create_container(container)
        except ResourceExistsError:
            pass


def first_line(error: HttpResponseError) -> str:
    text = (error.message or str(error) or type(error).__name__).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


# --- 4. believe only an attested outcome ----------------------------------------------------

def verify_trainer_outcome(run: dict, event: dict) -> dict:
    """`{"ok": True, "outcome"}` when the event proves itself (shared/attested_outcome.py):
    signed by the attested trainer of this run's group, for this run id and nonce, with
    figures within the plan; otherwise `{"ok": False, "reason"}` and the run keeps waiting."""
    payload = contract_of(run)
    planned = min(float(d["epsilon"]) for _, d in contracts.datasets(payload))
    try:
        outcome = attested_outcome.verify(event, run["run_id"], run["nonce"],
                                          deployment.hostdata(payload, run["contract_digest"]),
                                          settings.require("CCR_MAA_URL"), planned, settings.ca_bundle())
    except attested_outcome.OutcomeRejected as rejected:
        log.warning("run %s: completion event ignored: %s", run["run_id"], rejected)
        return {"ok": False, "reason": str(rejected)}
    return {"ok": True, "outcome": outcome}


def record_trainer_progress(event: dict) -> bool:
    """The trainer's per-epoch progress on the run record, once it proves itself as the outcome
    must (shared/attested_progress.py); anything else changes nothing."""
    records = RunRecords(azure_clients.blob_service())
    run_id = event.get("run_id")
    record = records.get(run_id) if isinstance(run_id, str) and run_id.startswith("run-") else None
    if record is None:
        log.warning("progress event for an unknown run; ignored")
        return False
    run = {"run_id": run_id, "contract_id": record["contract_id"], "contract_digest": record["contract_digest"]}
    payload = contract_of(run)
    planned = min(float(d["epsilon"]) for _, d in contracts.datasets(payload))
    return attested_progress.record(records, event, records.nonce(run_id),
                                    deployment.hostdata(payload, run["contract_digest"]),
                                    settings.require("CCR_MAA_URL"), planned, settings.ca_bundle())


# --- 5. clean up ----------------------------------------------------------------------------

def clean_up_trainer(run: dict) -> dict:
    """Keep the tail of the trainer's log in the run record, then delete the group."""
    client = azure_clients.container_client()
    resource_group = settings.require("CCR_RESOURCE_GROUP")
    group_name = deployment.group_name(run)
    lines: list[str] = []
    try:
        logs = client.containers.list_logs(resource_group, group_name, TRAINER_CONTAINER_NAME, tail=LOG_TAIL_LINES)
        lines = (logs.content or "").splitlines()[-LOG_TAIL_LINES:]
    except ResourceNotFoundError:
        pass
    try:
        client.container_groups.begin_delete(resource_group, group_name).result()
    except ResourceNotFoundError:
        pass
    RunRecords(azure_clients.blob_service()).enter_phase(run["run_id"], "cleaning_up", trainer_log_tail=lines)
    return {"log_lines": len(lines)}


# --- 6. record the outcome (the TDC is told next: orchestrations/tdc_notice.py) ----------------

def finish_run(run: dict, outcome: dict) -> dict:
    """Record the outcome and settle the privacy budget. A success is taken only with its
    output in place: a trainer's word alone does not make a run succeed."""
    payload = contract_of(run)
    output = azure_clients.blob_service().get_blob_client(
        *split_blob_path(storage_names.output_path(run["run_id"])))
    output_url = None
    if outcome["status"] == "succeeded":
        problem = output_problem(output, payload, outcome)
        if problem:
            outcome = {"status": "failed", "phase": outcome.get("phase", "training"),
                       "reason": f"trainer reported success but its output is {problem}"}
            _delete_if_present(output)  # create-only for the trainer: nothing could ever replace it
        else:
            output_url = output.url
    budget_spent = _settle_budget(run, payload, outcome)
    summary = {"run_id": run["run_id"], "contract_id": run["contract_id"], "status": outcome["status"],
               "failed_phase": outcome.get("phase") if outcome["status"] != "succeeded" else None,
               "reason": outcome.get("reason"), "output_blob": output_url,
               "output_blake3": outcome.get("output_blake3"), "metrics": outcome.get("metrics"),
               "privacy_budget_spent": budget_spent,
               # continued training: digests only (of the state kept in the clean room, of the one it started from)
               **{k: outcome[k] for k in ("model_state_sha256", "previous_model_sha256") if k in outcome}}
    # Written before the TDC is told (it may read the status as soon as it hears).
    RunRecords(azure_clients.blob_service()).finish(run["run_id"], summary)
    return summary


def output_problem(output: BlobClient, payload: dict, outcome: dict) -> str | None:
    """What is wrong with a claimed output, or None: it must exist, its package header must
    parse, name the TDC's output key and carry the digest the trainer reported."""
    try:
        header = read_header(package_head(output))
    except ResourceNotFoundError:
        return "missing"
    except HttpResponseError as error:
        if error.status_code is None or error.status_code >= 500:
            raise  # transient: the activity is retried
        return f"unverifiable (storage answered {error.status_code})"
    except PackageError as error:
        return f"invalid (not a valid package: {error})"
    if header.key_id != payload["tdc"]["output"]["key_id"]:
        return "invalid (not encrypted under the contract's output key)"
    if outcome.get(f"output_{header.manifest.algorithm}") != header.manifest.digest:
        return "invalid (its manifest digest is not the one the trainer reported)"
    return None


def _delete_if_present(blob: BlobClient) -> None:
    try:
        blob.delete_blob()
    except ResourceNotFoundError:
        pass


def _settle_budget(run: dict, payload: dict, outcome: dict) -> dict:
    """Spent = the trainer's report on success; a run that never trained gives its
    reservation back; a run that failed during training keeps it (data may have been used)."""
    budget = PrivacyBudget(azure_clients.blob_service())
    privacy = outcome.get("privacy") or {}
    spent = {}
    for (_, dataset), identities in zip(contracts.datasets(payload), charged_populations(payload, run), strict=True):
        for identity in identities:
            if outcome["status"] == "succeeded" and "epsilon" in privacy:
                budget.spend(identity, run["run_id"], privacy["epsilon"], privacy.get("delta", 0.0))
                spent[dataset["name"]] = privacy["epsilon"]
            elif outcome.get("data_untouched"):
                budget.release(identity, run["run_id"])
                spent[dataset["name"]] = 0.0
            else:
                spent[dataset["name"]] = budget.of_run(identity, run["run_id"])
    return spent

