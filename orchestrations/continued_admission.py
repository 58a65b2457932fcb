"""Starting a continued run: a new version of a dataset arrives for a contract that allows
continued training (shared/continuation.py).

Claim: exactly the versions their provider declared on the ledger start a run, each at most
once per contract. A package arriving in `datasets/<provider>/<dataset>/` that no contract
names is looked up among the contracts that allow continued training and name that dataset;
for each, it starts a run only if
  - it is encrypted under the data key the provider granted to the contract (its header's key
    id), so no new grant and no new key is needed, and
  - the provider's version declarations on the ledger (GET /versions) verify and one of them
    declares exactly this package, as a version after the contract's (shared/version_budget.py
    also names whose budgets it draws on), and
  - the run it continues from, if it finished, kept its model state (one not started or still
    going is waited for by the continued run's orchestration, up to its deadline).
The run is named by (contract, version) and its record is created with a conditional write
(orchestrations/admission.py `start_claimed`), so a second announcement of the same version
starts nothing. Anything else starts nothing, and the answer says why (no values).

Attacks stopped: an undeclared package slipped in under a provider's name (no declaration, no
run); a package under another key (refused before any run); announcing the same version
again, to train twice on it (one run id per version)."""
from __future__ import annotations

import asyncio
import logging

import azure.durable_functions as df
from azure.core.exceptions import ResourceNotFoundError

from orchestrations import admission, version_lookup
from orchestrations.run_steps import package_head
from shared import azure_clients, storage_names
from shared import contract as contracts
from shared import did as dids
from shared import version_declaration as versions
from shared.continuation import Continuation, dataset_entry, run_id
from shared.contract_store import ContractStore, split_blob_path
from shared.package import PackageError, read_header
from shared.run_records import RunRecords, run_id_for
from shared.version_budget import UndeclaredVersion, populations

log = logging.getLogger(__name__)


async def start_continued_runs(client: df.DurableOrchestrationClient, blob_path: str) -> list[dict]:
    """For a `datasets/` arrival: each continued run it starts, or why none (one answer per
    contract that could continue on it; none when no such contract names its dataset)."""
    claims = await asyncio.to_thread(_claims, blob_path)
    return [claim["answer"] if "answer" in claim else
            await admission.start_claimed(client, claim["run"], claim["created"]) for claim in claims]


def _claims(blob_path: str) -> list[dict]:
    container, name = split_blob_path(blob_path)
    named = storage_names.dataset_of_blob(name) if container == storage_names.DATASETS else None
    if named is None:
        return []
    service = azure_clients.blob_service()
    store = ContractStore(service)
    keys = store.continuing(*named)
    if not keys:
        return []
    try:
        header = read_header(package_head(service.get_blob_client(container, name)))
    except (PackageError, ResourceNotFoundError) as problem:
        return [{"answer": {"blob": blob_path, "started": False, "reason": f"not a valid package: {problem}"}}]
    return [_claim(store.get(contract_id, digest), named, blob_path, header) for contract_id, digest in keys]


def _claim(record: dict, named: tuple[str, str], blob_path: str, header) -> dict:
    payload, digest = record["payload"], record["digest"]
    party, dataset = named
    provider = next(did for did, entry in contracts.datasets(payload)
                    if (dids.did_name(did), entry["name"]) == (party, dataset))
    entry = dataset_entry(payload, provider, dataset)

    def nothing(reason: str) -> dict:
        return {"answer": {"contract_id": payload["contract_id"], "blob": blob_path, "started": False, "reason": reason}}

    if header.key_id != entry["key_id"]:
        return nothing("a new version must be encrypted under the data key granted to the contract: nothing started")
    pin = header.manifest.pin()
    declarations = version_lookup.declarations(provider, dataset)
    declared = [c for c in map(versions.claims, declarations) if versions.pin(c) == pin]
    if not declared:
        return nothing("its provider declared no version for this package: nothing started")
    version = declared[0]["version"]
    if version <= entry["version"]:
        return nothing(f"version {version} is not after the contract's version {entry['version']}: nothing started")
    try:
        charged = populations(provider, dataset, version, pin, declarations, dids.resolve)
    except UndeclaredVersion as problem:
        return nothing(f"{problem}: nothing started")
    between = [c["version"] for c in map(versions.claims, declarations) if entry["version"] < c["version"] < version]
    previous = run_id(payload["contract_id"], digest, provider, dataset, max(between)) if between else \
        run_id_for(payload["contract_id"], digest)
    earlier = RunRecords(azure_clients.blob_service()).get(previous) or {}
    if earlier.get("finished") and not earlier.get("model_state_sha256"):
        return nothing(f"the run it continues from ({previous}) kept no model state: nothing started")
    continuation = Continuation(provider, dataset, version, blob_path, pin,
                                next(t for t in declarations if versions.pin(versions.claims(t)) == pin),
                                previous, charged)
    run = {**admission.run_input(record), "run_id": run_id(payload["contract_id"], digest, provider, dataset, version),
           "continuation": continuation.to_dict()}
    created = RunRecords(azure_clients.blob_service()).create(run["run_id"], payload["contract_id"], digest)
    return {"run": run, "created": created}
