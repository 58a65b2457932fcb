"""Contracts: the payload model (schema 2, `validate_payload`; docs/INTERFACES.md says what each
field means), its COSE_Sign envelope (one signature per party) and its
verification: the ledger checks the signatures an envelope carries (`verify_signatures`), our
webhook and the trainer that every party signed and the terms are in force (`verify_contract`).

Envelope: COSE_Sign (CBOR tag 98) whose payload is the canonical JSON of the contract
(sorted keys, compact, UTF-8) and whose body protected header carries content type
`application/json`. Each COSE_Signature's protected header carries
  1 (alg)  ES256,
  4 (kid)  b"<signer DID>#<key id>",
  15 (CWT claims, RFC 9597) {1 (iss): "<signer DID>"}.
The contract digest (sha256 hex of the payload bytes) identifies the signed terms.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import cbor2
from cryptography.hazmat.primitives import serialization
from pycose.algorithms import Es256
from pycose.headers import KID, Algorithm, ContentType
from pycose.keys import CoseKey
from pycose.messages import SignMessage
from pycose.messages.signer import CoseSignature

from shared import budget_declaration
from shared import did as dids
from shared import package as packages
from shared import skr_sidecar, storage_names, trainer_resources

COSE_SIGN_TAG = 98
CWT_CLAIMS = 15
CWT_ISS = 1
PAYLOAD_CONTENT_TYPE = "application/json"

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# [<registry host>[:port]/]<repository>@sha256:<manifest digest>: never a tag (a tag can be moved)
IMAGE_REF = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?/)?"
                       r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
                       r"@sha256:[0-9a-f]{64}$")
BLOB_PATH = re.compile(r"^[a-z0-9-]+/[A-Za-z0-9_\-][A-Za-z0-9_.\-/]{0,250}\.ccr$")
VAULT_URL = re.compile(r"^https://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?$")

SCHEMA_VERSION = 2
WORKLOADS = ("training", "inference")  # continued training is training.continued_training
DEFAULT_THRESHOLD = 0.5          # an inference's label: 1 when the probability reaches it
MAX_INFERENCE_ROWS = 10_000_000     # per batch: the data plane holds a batch in memory (trainer_container/inference.py)
MIN_VALIDATION_SPLIT, MAX_VALIDATION_SPLIT = 0.1, 0.5
MIN_JOINED_ROWS = 1


class ContractError(ValueError):
    """A contract we must refuse; `http_status` is what the webhook answers."""
    http_status = 400


class MalformedContract(ContractError):
    """Not a COSE_Sign envelope, or a payload that breaks the contract schema."""


class UnsignedContract(ContractError):
    """An envelope without any signature."""


class BadSignature(ContractError):
    """A signature that does not verify: payload altered, or signed with another key."""
    http_status = 403


class UnknownSigner(ContractError):
    """A signature by a DID that is not a party to the contract (or signs twice)."""
    http_status = 403


class MissingSigner(ContractError):
    """A party of the contract has not signed it."""
    http_status = 422


class ExpiredContract(ContractError):
    http_status = 422


class NotYetValid(ContractError):
    http_status = 422


class SignerUnavailable(ContractError):
    """A signer's DID document could not be fetched now; the sender may retry."""
    http_status = 503


@dataclass(frozen=True)
class Contract:
    """A verified contract: its parsed payload, the exact signed bytes and their digest."""
    payload: dict
    payload_bytes: bytes
    digest: str
    signers: tuple[str, ...]

    @property
    def contract_id(self) -> str:
        return self.payload["contract_id"]


def canonical_json(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def payload_digest(payload_bytes: bytes) -> str:
    return hashlib.sha256(payload_bytes).hexdigest()


def parties(payload: dict) -> list[str]:
    """The DIDs that must sign: the TDC and every TDP."""
    return [payload["tdc"]["did"]] + [tdp["did"] for tdp in payload["tdps"]]


# ---------------------------------------------------------------- payload schema

def _need(condition: bool, reason: str) -> None:
    if not condition:
        raise MalformedContract(f"contract payload: {reason}")


def _object(value, where: str, fields: tuple[str, ...]) -> dict:
    _need(isinstance(value, dict), f"{where} must be an object")
    missing = [name for name in fields if name not in value]
    _need(not missing, f"{where} lacks {', '.join(missing)}")
    return value


def _text(value, where: str) -> str:
    _need(isinstance(value, str) and value.strip() != "", f"{where} must be a non-empty string")
    return value


def _number(value, where: str) -> float:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          f"{where} must be a finite number")
    return float(value)


def parse_time(value, where: str) -> datetime:
    _text(value, where)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    _need(moment is not None and moment.tzinfo is not None,
          f"{where} must be an RFC 3339 time with a zone, like 2026-11-01T00:00:00Z")
    return moment


def _did(value, where: str) -> str:
    _text(value, where)
    try:
        dids.document_url(value)
    except dids.DidError:
        _need(False, f"{where} must be a did:web identifier")
    return value


def _package(value, where: str, container: str) -> None:
    _object(value, where, ("blob", "key_id"))
    _need(isinstance(value["blob"], str) and BLOB_PATH.match(value["blob"]) is not None
          and value["blob"].startswith(container + "/") and ".." not in value["blob"],
          f"{where}.blob must be a path {container}/<name>.ccr (letters, digits, '_', '-', '.', '/')")
    _commitment(value, where)
    _key_id(value["key_id"], f"{where}.key_id")


def _commitment(value: dict, where: str) -> str:
    """A package is pinned by its manifest's commitment, in a field named after the hash:
    `blake3` (format version 2, what `ccr tdp publish` writes) or `sha256` (version 1)."""
    named = [name for name in packages.COMMITMENTS.values() if name in value]
    _need(len(named) == 1, f"{where} must pin its package by exactly one of "
          f"{' or '.join(packages.COMMITMENTS.values())}, the digest its manifest carries")
    return _sha256(value[named[0]], f"{where}.{named[0]}")


def _sha256(value, where: str) -> str:
    _need(isinstance(value, str) and SHA256_HEX.match(value) is not None, f"{where} must be 64 lowercase hex digits")
    return value


def _key_id(value, where: str) -> str:
    _need(isinstance(value, str) and NAME.match(value) is not None,
          f"{where} must name the data key (letters, digits, '_', '.' or '-'), not a Key Vault URL")
    return value


def _vault(value, where: str) -> str:
    _need(isinstance(value, str) and VAULT_URL.match(value) is not None,
          f"{where} must be a Key Vault URL like https://<vault>.vault.azure.net")
    return value


def _positive(value, where: str) -> float:
    number = _number(value, where)
    _need(number > 0, f"{where} must be > 0")
    return number


def _integer(value, where: str, minimum: int) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f"{where} must be an integer >= {minimum}")
    return value


def _dataset(dataset, where: str, provider: str) -> str:
    _object(dataset, where, ("name", "version", "blob", "key_id", "epsilon", "budget"))
    name = _text(dataset["name"], f"{where}.name")
    _need(NAME.match(name) is not None, f"{where}.name must be letters, digits, '_', '.' or '-'")
    _integer(dataset["version"], f"{where}.version", 1)
    _package(dataset, where, storage_names.DATASETS)
    requested = _positive(dataset["epsilon"], f"{where}.epsilon")
    declared = declared_budget(dataset, where)
    _need(declared["provider"] == provider and declared["dataset"] == name,
          f"{where}.budget is a declaration for {budget_declaration.identity(declared)}, not for {provider}/{name}")
    _need(requested <= declared["epsilon"],
          f"{where}.epsilon (asked for this contract) must not exceed the provider's declared lifetime epsilon "
          f"({declared['epsilon']})")
    return name


def declared_budget(dataset: dict, where: str = "dataset") -> dict:
    """The claims of a dataset's budget declaration (`shared.budget_declaration`; its signature
    is checked with the parties' signatures, by `verify_signatures` and `verify_contract`)."""
    try:
        return budget_declaration.claims(dataset["budget"])
    except budget_declaration.DeclarationError as error:
        raise MalformedContract(f"{where}.budget: {error}") from None


def _training(workload, where: str) -> None:
    _object(workload, where, ("image", "policy_template_sha256", "join", "deadline_seconds"))
    _need(isinstance(workload["image"], str) and IMAGE_REF.match(workload["image"]) is not None,
          f"{where}.image must be pinned by digest (<registry>/<repository>@sha256:<hex>)")
    _sha256(workload["policy_template_sha256"], f"{where}.policy_template_sha256")
    if "skr_sidecar_image" in workload:  # optional: shared/skr_sidecar.py's default when absent
        try:
            skr_sidecar.pinned_image(workload["skr_sidecar_image"], f"{where}.skr_sidecar_image")
        except skr_sidecar.SidecarError as error:
            raise MalformedContract(str(error)) from None
    _need(isinstance(workload["join"], dict), f"{where}.join must be an object")
    _integer(workload["deadline_seconds"], f"{where}.deadline_seconds", 1)
    if "resources" in workload:  # optional; shared/trainer_resources.py cites ACI's confidential limits
        reason = trainer_resources.problem(workload["resources"])
        _need(reason is None, f"{where}.resources {reason}")
    if "continued_training" in workload:  # optional, false when absent: contracts before it stay valid
        _need(isinstance(workload["continued_training"], bool),
              f"{where}.continued_training must be true or false (whether new dataset versions continue training "
              "from the last model)")


def _inference(workload, where: str, payload: dict) -> None:
    """The inference workload: who may submit batches (`requesters`, parties of the contract),
    whose stored features an inference may use besides the requester's own (`feature_sources`,
    providers of the contract, who sign it anyway), whether the TDC also receives the weights
    (`weights_leave`: the model owner may forbid it), a deadline, the largest batch and the
    label threshold."""
    _object(workload, where, ("image", "policy_template_sha256", "requesters", "weights_leave",
                              "deadline_seconds", "max_rows"))
    known = {"image", "policy_template_sha256", "requesters", "feature_sources", "weights_leave",
             "deadline_seconds", "max_rows", "threshold"}
    unknown = sorted(set(workload) - known)
    _need(not unknown, f"{where} has unknown field(s) {', '.join(unknown)}")
    _need(isinstance(workload["image"], str) and IMAGE_REF.match(workload["image"]) is not None,
          f"{where}.image must be pinned by digest (<registry>/<repository>@sha256:<hex>)")
    _sha256(workload["policy_template_sha256"], f"{where}.policy_template_sha256")
    members = set(parties(payload))
    providers = {tdp["did"] for tdp in payload["tdps"]}
    requesters = workload["requesters"]
    _need(isinstance(requesters, list) and requesters, f"{where}.requesters must be a non-empty list of party DIDs")
    for i, did in enumerate(requesters):
        _need(isinstance(did, str) and did in members, f"{where}.requesters[{i}] must be the DID of a party "
              "of this contract (the TDC or a TDP)")
    _need(len(set(requesters)) == len(requesters), f"{where}.requesters names a party twice")
    sources = workload.get("feature_sources", [])
    _need(isinstance(sources, list), f"{where}.feature_sources must be a list of provider DIDs")
    for i, did in enumerate(sources):
        _need(isinstance(did, str) and did in providers, f"{where}.feature_sources[{i}] must be the DID of a "
              "provider (TDP) of this contract: only a provider that signs it may lend its features")
    _need(len(set(sources)) == len(sources), f"{where}.feature_sources names a provider twice")
    _need(isinstance(workload["weights_leave"], bool), f"{where}.weights_leave must be true or false")
    _integer(workload["deadline_seconds"], f"{where}.deadline_seconds", 1)
    _integer(workload["max_rows"], f"{where}.max_rows", 1)
    _need(workload["max_rows"] <= MAX_INFERENCE_ROWS, f"{where}.max_rows must be at most {MAX_INFERENCE_ROWS}")
    if "threshold" in workload:
        threshold = _number(workload["threshold"], f"{where}.threshold")
        _need(0 < threshold < 1, f"{where}.threshold must be in (0, 1)")


def validate_payload(payload) -> dict:
    """Check every field the system acts on; raise MalformedContract naming the first fault."""
    _need(isinstance(payload, dict), "payload must be an object")
    _need(payload.get("schema_version") == SCHEMA_VERSION,
          f"schema_version must be {SCHEMA_VERSION} (older contracts are not accepted: write it again "
          "with `ccr contract new`)")
    _object(payload, "payload", ("contract_id", "purpose", "valid_from", "valid_until", "tdc", "tdps",
                                 "privacy", "evaluation", "workloads"))
    contract_id = _text(payload["contract_id"], "contract_id")
    _need(NAME.match(contract_id) is not None, "contract_id must be letters, digits, '_', '.' or '-'")
    _text(payload["purpose"], "purpose")
    _need(parse_time(payload["valid_from"], "valid_from") < parse_time(payload["valid_until"], "valid_until"),
          "valid_from must be before valid_until")

    tdc = _object(payload["tdc"], "tdc", ("did", "key_vault", "model", "output"))
    _did(tdc["did"], "tdc.did")
    _vault(tdc["key_vault"], "tdc.key_vault")
    _package(tdc["model"], "tdc.model", storage_names.MODELS)
    output = _object(tdc["output"], "tdc.output", ("key_id",))
    _key_id(output["key_id"], "tdc.output.key_id")
    if "webhook" in output:
        _need(isinstance(output["webhook"], str) and output["webhook"].startswith(("https://", "http://")),
              "tdc.output.webhook must be an http(s) URL")

    _need(isinstance(payload["tdps"], list) and payload["tdps"], "tdps must be a non-empty list")
    names, key_ids = set(), [tdc["model"]["key_id"], output["key_id"]]
    for i, tdp in enumerate(payload["tdps"]):
        _object(tdp, f"tdps[{i}]", ("did", "key_vault", "datasets"))
        _did(tdp["did"], f"tdps[{i}].did")
        _vault(tdp["key_vault"], f"tdps[{i}].key_vault")
        _need(isinstance(tdp["datasets"], list) and tdp["datasets"], f"tdps[{i}].datasets must be a non-empty list")
        for j, dataset in enumerate(tdp["datasets"]):
            name = _dataset(dataset, f"tdps[{i}].datasets[{j}]", tdp["did"])
            _need(name not in names, f"dataset name {name} appears twice")
            names.add(name)
            key_ids.append(dataset["key_id"])
    _need(len(set(key_ids)) == len(key_ids), "every package and the output need their own key_id")
    signers = parties(payload)
    _need(len(set(signers)) == len(signers), "the TDC and the TDPs must have distinct DIDs")

    privacy = _object(payload["privacy"], "privacy", ("delta",))
    _need(0 < _number(privacy["delta"], "privacy.delta") < 1, "privacy.delta must be in (0, 1)")
    for provider, dataset in datasets(payload):
        _need(privacy["delta"] <= declared_budget(dataset)["delta"],
              f"privacy.delta must not exceed the declared lifetime delta of dataset {dataset['name']}")
    evaluation = _object(payload["evaluation"], "evaluation", ("validation_split", "min_joined_rows"))
    split = _number(evaluation["validation_split"], "evaluation.validation_split")
    _need(MIN_VALIDATION_SPLIT <= split <= MAX_VALIDATION_SPLIT,
          f"evaluation.validation_split must be in [{MIN_VALIDATION_SPLIT}, {MAX_VALIDATION_SPLIT}]")
    _integer(evaluation["min_joined_rows"], "evaluation.min_joined_rows", MIN_JOINED_ROWS)

    workloads = payload["workloads"]
    _need(isinstance(workloads, dict) and "training" in workloads, "workloads must be an object with 'training'")
    unknown = sorted(set(workloads) - set(WORKLOADS))
    _need(not unknown, f"workloads {', '.join(unknown)} are not supported (supported: {', '.join(WORKLOADS)})")
    _training(workloads["training"], "workloads.training")
    if "inference" in workloads:  # optional: contracts without it allow training only
        _inference(workloads["inference"], "workloads.inference", payload)
    return payload


def training(payload: dict) -> dict:
    """The training workload's terms (image, policy template digest, join, deadline)."""
    return payload["workloads"]["training"]


def training_sidecar(payload: dict) -> skr_sidecar.SidecarSpec:
    """The SKR sidecar the training workload was written for (its policy template names it)."""
    return skr_sidecar.of_workload(training(payload))


def continued_training(payload: dict) -> bool:
    """Whether every party agreed that a declared new dataset version continues training from
    the last run's model (shared/version_declaration.py); false unless the contract says so (a
    partial payload without a training workload does not)."""
    return ((payload.get("workloads") or {}).get("training") or {}).get("continued_training", False) is True


def inference(payload: dict) -> dict | None:
    """The inference workload's terms, with the optional fields' defaults filled in
    (`feature_sources` [] = the requester's own features only, `threshold` 0.5), or None when
    the contract allows no inference."""
    workload = (payload.get("workloads") or {}).get("inference")  # a partial payload: none
    if workload is None:
        return None
    return {"feature_sources": [], "threshold": DEFAULT_THRESHOLD, **workload}


def keeps_model_state(payload: dict) -> bool:
    """Whether a run keeps its trained model inside the clean room (shared/model_states.py): for
    continued training, or for an inference workload to restore it (never from the TDC)."""
    return continued_training(payload) or ((payload.get("workloads") or {}).get("inference") is not None)


def weights_leave(payload: dict) -> bool:
    """Whether the TDC's output carries the trained model's weights: yes unless the contract's
    inference workload says `weights_leave: false` (the model owner lets parties query the model
    inside the clean room without anyone holding its weights)."""
    workload = (payload.get("workloads") or {}).get("inference")
    return workload is None or workload.get("weights_leave") is not False


def datasets(payload: dict) -> list[tuple[str, dict]]:
    """(provider DID, dataset entry) for every dataset of the contract, in order."""
    return [(tdp["did"], dataset) for tdp in payload["tdps"] for dataset in tdp["datasets"]]


def dataset_identity(provider_did: str, dataset: dict) -> str:
    """The population a dataset's privacy budget belongs to: its provider and its name."""
    return f"{provider_did}/{dataset['name']}"


# ---------------------------------------------------------------- envelope

@dataclass(frozen=True)
class _Envelope:
    body: list           # [protected bytes, unprotected map, payload bytes, signatures]
    payload: dict
    claimed: list[str]   # the DID each signature claims, in order


def _read(envelope: bytes) -> _Envelope:
    """Parse structure and payload (no signature checked): MalformedContract on any fault."""
    if not isinstance(envelope, (bytes, bytearray)) or not envelope:
        raise MalformedContract("contract envelope is empty")
    stream = io.BytesIO(bytes(envelope))
    try:
        tagged = cbor2.CBORDecoder(stream).decode()
    except Exception:  # cbor2 raises a family of decoder errors on arbitrary bytes
        raise MalformedContract("contract envelope is not valid CBOR") from None
    if stream.tell() != len(envelope):
        raise MalformedContract("contract envelope has trailing bytes after the CBOR message")
    if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != COSE_SIGN_TAG:
        raise MalformedContract("contract envelope is not a COSE_Sign message (CBOR tag 98)")
    body = tagged.value
    if (not isinstance(body, list) or len(body) != 4 or not isinstance(body[0], bytes)
            or not isinstance(body[1], dict) or not isinstance(body[2], bytes) or not isinstance(body[3], list)):
        raise MalformedContract("contract envelope is not [protected, unprotected, payload, signatures]")
    try:
        payload = json.loads(body[2].decode())
    except (UnicodeDecodeError, ValueError):
        raise MalformedContract("contract payload is not JSON") from None
    validate_payload(payload)
    if canonical_json(payload) != body[2]:
        raise MalformedContract("contract payload is not in canonical JSON form")
    claimed = [_claimed_signer(signature) for signature in body[3]]
    return _Envelope(body, payload, claimed)


def _claimed_signer(signature) -> str:
    if (not isinstance(signature, list) or len(signature) != 3 or not isinstance(signature[0], bytes)
            or not isinstance(signature[2], bytes)):
        raise MalformedContract("a COSE_Signature is not [protected, unprotected, signature]")
    try:
        header = cbor2.loads(signature[0]) if signature[0] else {}
        kid = header[KID.identifier].decode()
        issuer = header[CWT_CLAIMS][CWT_ISS]
        did, _ = dids.split_did_url(kid)
    except Exception:
        raise MalformedContract("a signature's protected header lacks kid '<did>#<key id>' and issuer DID") from None
    if did != issuer:
        raise MalformedContract(f"a signature's kid names {did} but its issuer is {issuer}")
    return did


def envelope_signers(envelope: bytes) -> tuple[dict, list[str]]:
    """(payload, the DIDs the signatures claim), without verifying anything: the ledger's view."""
    parsed = _read(envelope)
    return parsed.payload, parsed.claimed


def new_envelope(payload: dict) -> bytes:
    """An unsigned COSE_Sign envelope over the canonical payload (parties then add signatures)."""
    validate_payload(payload)
    protected = cbor2.dumps({ContentType.identifier: PAYLOAD_CONTENT_TYPE})
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN_TAG, [protected, {}, canonical_json(payload), []]))


def add_signature(envelope: bytes, identity: dids.Identity) -> bytes:
    """The envelope with one more COSE_Signature, by `identity` (ES256)."""
    parsed = _read(envelope)
    if identity.did not in parties(parsed.payload):
        raise UnknownSigner(f"{identity.did} is not a party to contract {parsed.payload['contract_id']}")
    if identity.did in parsed.claimed:
        raise UnknownSigner(f"{identity.did} has already signed this envelope")
    message = SignMessage.from_cose_obj([parsed.body[0], dict(parsed.body[1]), parsed.body[2], []], True)
    signer = CoseSignature(
        phdr={Algorithm: Es256, KID: identity.key_ref.encode(), CWT_CLAIMS: {CWT_ISS: identity.did}},
        key=CoseKey.from_pem_private_key(identity.private_pem().decode()))
    message.signers = [signer]
    body = list(parsed.body)
    body[3] = list(body[3]) + [signer.encode()]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN_TAG, body))


def sign_contract(payload: dict, identities: list[dids.Identity]) -> bytes:
    envelope = new_envelope(payload)
    for identity in identities:
        envelope = add_signature(envelope, identity)
    return envelope


def merge_envelopes(first: bytes, second: bytes) -> bytes:
    """Signatures of both envelopes over the same payload, each signer once."""
    a, b = _read(first), _read(second)
    if a.body[2] != b.body[2] or a.body[0] != b.body[0]:
        raise MalformedContract("the envelopes sign different contracts")
    body = list(a.body)
    body[3] = list(a.body[3]) + [s for s, did in zip(b.body[3], b.claimed) if did not in a.claimed]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN_TAG, body))


# ---------------------------------------------------------------- verification

def _check_signers_are_parties(payload: dict, claimed: list[str]) -> None:
    """At least one signature, each by a distinct party."""
    if not claimed:
        raise UnsignedContract("contract carries no signature")
    required = parties(payload)
    extra = sorted({did for did in claimed if did not in required})
    if extra:
        raise UnknownSigner(f"signed by {', '.join(extra)}, not a party to the contract")
    twice = sorted({did for did in claimed if claimed.count(did) > 1})
    if twice:
        raise UnknownSigner(f"{', '.join(twice)} signed more than once")


def _check_signer_set(payload: dict, claimed: list[str]) -> None:
    _check_signers_are_parties(payload, claimed)
    missing = [did for did in parties(payload) if did not in claimed]
    if missing:
        raise MissingSigner(f"not signed by {', '.join(missing)}")


def _verify_signature(message: SignMessage, signer: CoseSignature, did: str, resolve_did) -> None:
    if signer.phdr.get(Algorithm) is not Es256:
        raise BadSignature(f"signature by {did} does not use ES256 in its protected header")
    key_ref = signer.phdr[KID].decode()
    try:
        document = resolve_did(did)
        public = dids.verification_key(document, key_ref)
    except dids.DidResolutionError as problem:
        raise SignerUnavailable(str(problem)) from None
    except dids.DidError as problem:
        raise BadSignature(f"cannot verify {did}'s signature: {problem}") from None
    signer.key = CoseKey.from_pem_public_key(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    try:
        valid = signer.verify_signature()
    except Exception:  # pycose raises on key/algorithm mismatches
        valid = False
    if not valid:
        raise BadSignature(f"signature by {did} does not match the payload and its DID key "
                           "(contract altered or signed with another key)")


def _verify_signatures(parsed: _Envelope, resolve_did: Callable[[str], dict] | None) -> None:
    """Every party signature, then every budget declaration the signing providers carry."""
    resolve_did = resolve_did or dids.resolve
    message = SignMessage.from_cose_obj([parsed.body[0], dict(parsed.body[1]), parsed.body[2],
                                         [list(s) for s in parsed.body[3]]], True)
    for signer, did in zip(message.signers, parsed.claimed):
        _verify_signature(message, signer, did, resolve_did)
    for provider, dataset in datasets(parsed.payload):
        if provider in parsed.claimed:
            _verify_declaration(dataset, provider, resolve_did)


def _verify_declaration(dataset: dict, provider: str, resolve_did) -> None:
    try:
        budget_declaration.verify(dataset["budget"], resolve_did)
    except dids.DidResolutionError as problem:
        raise SignerUnavailable(str(problem)) from None
    except (budget_declaration.DeclarationError, dids.DidError) as problem:
        raise BadSignature(f"dataset {dataset['name']}'s budget declaration by {provider}: {problem}") from None


def verify_signatures(envelope: bytes, resolve_did: Callable[[str], dict] | None = None) -> Contract:
    """The contract as far as it is signed: every signature the envelope carries (at least one)
    is by a distinct party and verifies against its DID document; parties may still be missing
    (`Contract.signers` lists those who signed) and the validity window is not checked. What the
    ledger requires of a submission; ContractError subclasses as for `verify_contract`."""
    parsed = _read(envelope)
    _check_signers_are_parties(parsed.payload, parsed.claimed)
    _verify_signatures(parsed, resolve_did)
    return Contract(parsed.payload, parsed.body[2], payload_digest(parsed.body[2]), tuple(parsed.claimed))


def verify_contract(envelope: bytes, resolve_did: Callable[[str], dict] | None = None,
                    now: datetime | None = None) -> Contract:
    """The contract, if every party (and nobody else) signed exactly these terms and they are
    in force at `now`; otherwise the ContractError subclass that says why."""
    parsed = _read(envelope)
    _check_signer_set(parsed.payload, parsed.claimed)
    _verify_signatures(parsed, resolve_did)
    now = now or datetime.now(timezone.utc)
    if now < parse_time(parsed.payload["valid_from"], "valid_from"):
        raise NotYetValid(f"contract is valid from {parsed.payload['valid_from']}")
    if now > parse_time(parsed.payload["valid_until"], "valid_until"):
        raise ExpiredContract(f"contract expired at {parsed.payload['valid_until']}")
    return Contract(parsed.payload, parsed.body[2], payload_digest(parsed.body[2]), tuple(parsed.claimed))
