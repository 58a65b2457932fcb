"""A party's storage credential reaches only its own blobs: a user SAS for one blob.

Claim: parties never hold the storage account key; the only storage credential a party gets is
a SAS from the control plane (`POST /api/sas`) for one blob (`sr=b`: no listing, no other blob),
create-only (`sp=c`: a new blob once, never an overwrite or a delete) or read-only (`sp=r`), and
only for
  - `datasets/<its name>/...` and `models/<its name>/...` (create, read back): its own packages;
  - `grants/<digest>/<kek name>.jwe` (create, read back) when it presents that contract's payload
    (whose digest is `<digest>`), is a party of it, and `<kek name>` is the KEK of a key *it*
    grants in that contract (`shared.key_grants.subjects`). Grants are written when a party
    signs, before the contract is complete and accepted, so the payload stands in for the
    accepted record; the name pins the grant to the grantor;
  - `outputs/<run id>/output.ccr` (read) when it is the TDC of that run's contract;
  - `inference-batches/<its name>/...` (create, read back): its own inference batches
    (shared/inference_requests.py: the name in the path is the uploader);
  - `predictions/<run id>/predictions.ccr` (read) when it is the requester of that inference run.
A requester's inference grants (`inference_requests.grant_subjects`) are grants it makes.
Its name is the last segment of its did:web (`shared.did.did_name`); DIDs hosted by one ledger
have distinct names (first registration wins).

Attacks stopped: a party rewriting the budget ledger (`runs/budget/...`), contract records or the
input index (`contracts/...`), run records (`runs/records/...`); overwriting or reading another
provider's package, replacing another party's grant, reading another party's output. Only the
control plane, with the account key, writes those (`shared.json_blobs`).
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Callable

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from shared import contract as contracts
from shared import did as dids
from shared import inference_requests, key_grants, storage_names
from shared.blob_sas import CREATE_ONLY, READ_ONLY, blob_sas_url

SAS_SECONDS = 3600
PERMISSIONS = {"create": CREATE_ONLY, "read": READ_ONLY}
MAX_PATH = 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")  # never "." or ".."
_OWN_CONTAINERS = (storage_names.DATASETS, storage_names.MODELS, storage_names.INFERENCE_BATCHES)
_CONTROL_PLANE = (storage_names.CONTRACTS, storage_names.RUNS)


class SasRefused(Exception):
    """No SAS for this party and blob; `str()` says why (never a SAS), `http_status` 403 or 400."""

    def __init__(self, reason: str, http_status: int = 403):
        super().__init__(reason)
        self.http_status = http_status


def check(did: str, path, permission, contract=None,
          tdc_of_run: Callable[[str], str | None] = lambda run_id: None,
          requester_of_run: Callable[[str], str | None] = lambda run_id: None) -> str:
    """The blob path `did` may get a `permission` SAS for, or SasRefused saying why not."""
    if not isinstance(permission, str) or permission not in PERMISSIONS:
        raise SasRefused(f"permission must be one of {', '.join(PERMISSIONS)}", 400)
    if isinstance(path, str) and path.split("/", 1)[0] in _CONTROL_PLANE:   # whatever the rest says
        raise SasRefused(f"{path.split('/', 1)[0]}/ is written and read by the control plane only")
    container, segments = _split(path)
    if container in _OWN_CONTAINERS:
        name = dids.did_name(did)
        if segments[0] != name or len(segments) < 2:
            raise SasRefused(f"{container}/: a party gets a SAS only under its own name ({container}/{name}/...)")
    elif container == storage_names.GRANTS:
        _check_grant(did, segments, contract)
    elif container == storage_names.OUTPUTS:
        _check_run_result(did, permission, container, segments, storage_names.output_path, tdc_of_run,
                          "outputs/ are written by the trainer only; a party may only read its run's output",
                          "outputs/<run id>/output.ccr is readable only by the TDC of that run's contract")
    elif container == storage_names.PREDICTIONS:
        _check_run_result(did, permission, container, segments, inference_requests.predictions_path, requester_of_run,
                          "predictions/ are written by the inference only; a requester may only read its own",
                          "predictions/<run id>/predictions.ccr is readable only by the requester of that run")
    else:
        raise SasRefused(f"parties get no SAS in container {container!r}")
    return f"{container}/{'/'.join(segments)}"


def issue(service: BlobServiceClient, path: str, permission: str, now: datetime | None = None) -> dict:
    """A SAS URL for a path `check` allowed (a secret: the caller returns it, never logs it).
    For `create` the container is made first: a blob SAS cannot create one."""
    if permission == "create":
        try:
            service.create_container(path.split("/", 1)[0])
        except ResourceExistsError:
            pass
    expiry = (now or datetime.now(timezone.utc)) + timedelta(seconds=SAS_SECONDS)
    return {"url": blob_sas_url(service, path, PERMISSIONS[permission], expiry), "blob": path,
            "permission": permission, "expires": expiry.isoformat(timespec="seconds")}


def _check_run_result(did: str, permission: str, container: str, segments: list[str], result_path,
                      owner_of_run: Callable[[str], str | None], write_refusal: str, read_refusal: str) -> None:
    """A run's one result blob (`result_path(run id)`): read only, and only by the party it is for."""
    if permission != "read":
        raise SasRefused(write_refusal)
    if len(segments) != 2 or f"{container}/{'/'.join(segments)}" != result_path(segments[0]) \
            or owner_of_run(segments[0]) != did:
        raise SasRefused(read_refusal)


def _split(path) -> tuple[str, list[str]]:
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise SasRefused(f"blob must be '<container>/<path>' (at most {MAX_PATH} characters)", 400)
    container, *segments = path.split("/")
    if not segments or not all(_SEGMENT.match(part) for part in [container, *segments]):
        raise SasRefused("blob must be '<container>/<path>' with segments of letters, digits, '_', '-' and '.' "
                         "(no empty, '.' or '..' segment)", 400)
    return container, segments


def _check_grant(did: str, segments: list[str], contract) -> None:
    if not isinstance(contract, dict):
        raise SasRefused("a SAS for a grant needs the contract payload (\"contract\") it grants a key to", 400)
    try:
        payload = contracts.validate_payload(contract)
    except contracts.ContractError as problem:
        raise SasRefused(f"contract: {problem}", 400) from None
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    if len(segments) != 2 or segments[0] != digest:
        raise SasRefused("grants/<digest>/...: the digest must be that of the contract presented")
    if did not in contracts.parties(payload):
        raise SasRefused("you are not a party to this contract")
    requested = inference_requests.grant_subjects(payload, did) \
        if did in (contracts.inference(payload) or {}).get("requesters", []) else []
    own = {key_grants.grant_blob(digest, subject.subject) for subject in [*key_grants.subjects(payload), *requested]
           if subject.grantor == did}
    if "/".join(segments) not in own:
        raise SasRefused("that grant is not one of yours: a party writes only the grants of the keys it grants")
