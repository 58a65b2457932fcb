"""A confidential inference request: whose batch it is, which keys it needs, where its
predictions go, and the one run that scores it.

Claim: a batch is scored only for a party the contract names in `workloads.inference.requesters`,
only under keys that party granted to this contract's *inference* group, and its predictions are
readable by that party alone.

- Who uploaded it. A batch lives at `inference-batches/<party name>/<contract digest>/<batch>.ccr`
  (a contract is its id and its digest: the digest alone names the signed terms).
  A party's only storage credential is a one-blob SAS under its own name (shared/party_sas.py),
  so the name in the path is the uploader, as for datasets and models; the requester is the
  contract's requester whose DID has that name. A path naming anyone else is no request at all:
  nothing starts (`requester`).
- Which keys. The requester grants two data keys to the contract, as every party grants its own
  (shared/key_grants.py): its batch key (subject `inference-input:<did>`) and its output key
  (`inference-output:<did>`), each under a KEK in its own vault whose release policy pins the
  contract's inference group (`key_grants.inference_release_policy`), never the training
  group. Their key ids are derived (`key_id`), so the contract needs no field for them and a
  batch under any other key is refused before any key is asked for.
- Which model. The control plane names the training run whose kept model state the inference
  restores (shared/model_states.py) in the request document it writes beside that state
  (`request_path`); the inference group checks the document against the contract and its own
  run id before it asks for any key.
- One run per batch. The run id is derived from (contract, digest, batch path) (`run_id`), so a
  batch announced twice is scored once.

Attacks stopped: a party the contract does not name as requester uploading a batch (nothing
starts); a requester naming another party's batch (its path names the other party, whose DID the
run then serves, and whose keys only that party granted); the training group, the TDC or a
provider releasing a requester's keys (their KEKs pin the inference group's host data only).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from shared import contract as contracts
from shared import did as dids
from shared import key_grants, storage_names

INPUT, OUTPUT = "input", "output"
CONTENT_TYPE = "text/csv"  # a batch is a prepared CSV (trainer_container/inference.py)
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class RequestError(ValueError):
    """An inference request that does not hold (names fields, never values)."""


def batch_blob(party: str, contract_digest: str, batch: str) -> str:
    """`<party>/<contract digest>/<batch>.ccr` in `inference-batches/`: under the uploader's name."""
    return f"{party}/{contract_digest}/{batch}{storage_names.PACKAGE_SUFFIX}"


def batch_path(party: str, contract_digest: str, batch: str) -> str:
    return f"{storage_names.INFERENCE_BATCHES}/{batch_blob(party, contract_digest, batch)}"


def parse_batch_path(path: str) -> tuple[str, str, str] | None:
    """(party name, contract digest, batch name) of
    `inference-batches/<party>/<contract digest>/<batch>.ccr`, else None."""
    container, _, name = path.partition("/")
    parts = name.split("/")
    if container != storage_names.INFERENCE_BATCHES or len(parts) != 3 \
            or not parts[2].endswith(storage_names.PACKAGE_SUFFIX):
        return None
    party, digest, batch = parts[0], parts[1], parts[2][:-len(storage_names.PACKAGE_SUFFIX)]
    valid = all(_SEGMENT.match(p) for p in (party, batch)) and _DIGEST.match(digest)
    return (party, digest, batch) if valid else None


def requester(payload: dict, party: str) -> str | None:
    """The DID of the contract's requester named `party`, or None (not a requester: no request)."""
    terms = contracts.inference(payload)
    if terms is None:
        return None
    return next((did for did in terms["requesters"] if dids.did_name(did) == party), None)


def run_id(contract_id: str, contract_digest: str, batch: str) -> str:
    """The one inference run of this contract on this batch (its blob path)."""
    identity = f"{contract_id}@{contract_digest}#inference:{batch}"
    return "run-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def key_id(contract_id: str, requester_did: str, kind: str) -> str:
    """The key id a requester's batch (INPUT) or predictions (OUTPUT) package names."""
    return f"{contract_id}.inference-{kind}.{dids.did_name(requester_did)}"


def _vault(payload: dict, did: str) -> str:
    if payload["tdc"]["did"] == did:
        return payload["tdc"]["key_vault"]
    return next(tdp["key_vault"] for tdp in payload["tdps"] if tdp["did"] == did)


def grant_subjects(payload: dict, requester_did: str) -> list[key_grants.GrantSubject]:
    """The requester's two grants to this contract's inference group: batch key, output key."""
    vault, name = _vault(payload, requester_did), dids.did_name(requester_did)
    return [key_grants.GrantSubject(f"inference-{kind}:{requester_did}", f"inference {kind} key of {name}",
                                    requester_did, vault, key_id(payload["contract_id"], requester_did, kind))
            for kind in (INPUT, OUTPUT)]


def predictions_path(run: str) -> str:
    """`predictions/<run id>/predictions.ccr`: the one blob an inference run creates."""
    return f"{storage_names.PREDICTIONS}/{run}/predictions{storage_names.PACKAGE_SUFFIX}"


def request_path(contract_digest: str, run: str) -> str:
    """`model-states/<digest>/<run id>.inference.json`: the request, written by the control plane."""
    return f"{storage_names.MODEL_STATES}/{contract_digest}/{run}.inference.json"


@dataclass(frozen=True)
class Request:
    batch: str          # inference-batches/<party>/<contract digest>/<batch>.ccr
    requester: str      # the requester's DID
    model_run_id: str   # the training run whose kept model state is scored with

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def checked(document: bytes, payload: dict, contract_digest: str, run: str) -> Request:
    """The request, if it holds for this contract and this run: the batch is under the name of
    a requester of the contract, for this contract, and this run is that batch's run."""
    if contracts.inference(payload) is None:
        raise RequestError("the contract allows no inference")
    try:
        fields = json.loads(document)
        request = Request(**{k: fields[k] for k in ("batch", "requester", "model_run_id")})
    except (ValueError, TypeError, KeyError):
        raise RequestError("the inference request is not a valid request document") from None
    parsed = parse_batch_path(request.batch) if isinstance(request.batch, str) else None
    if parsed is None or parsed[1] != contract_digest:
        raise RequestError("the batch is not an inference batch of this contract")
    if requester(payload, parsed[0]) != request.requester or request.requester is None:
        raise RequestError("the batch's uploader is not a requester the contract names")
    if run != run_id(payload["contract_id"], contract_digest, request.batch):
        raise RequestError("this run is not the inference run of the named batch (its run id differs)")
    return request
