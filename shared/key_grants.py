"""Consent as a key grant (KEK-DEK): a party's data key is released only to the trainer of a
contract that party signed.

A package (dataset, model, or the TDC's output key) is encrypted once under a data key (DEK)
that its owner keeps. When the owner signs a contract it also *grants* the DEK to that
contract: it creates a key-encryption key (KEK: RSA-HSM, exportable) in its own Key Vault
whose secure-key-release policy pins the host data of that contract's container policy
(`shared.container_group.training_hostdata`: the policy carries the contract digest), and
stores the DEK wrapped under the KEK's public half as a JWE (RSA-OAEP-256 + A256GCM,
jwcrypto) in the `grants` container.

Attack stopped: a contract the owner did not sign has another digest, hence other host
data; no KEK's policy admits it, whatever image it runs, so it never unwraps the DEK.

The KEK's name is derived from the contract digest and the grant's subject (below), so the
control plane and the trainer find it without the contract naming it (the contract cannot
contain its own host data). Wrapping uses only the KEK's public half: anyone can write a
grant, but a forged one only wraps a key that fails the package's authentication.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwe, jwk
from jwcrypto.common import JWException

from shared import contract as contracts
from shared import storage_names
from shared.container_group import inference_hostdata, training_hostdata
from shared.release_policy import build_release_policy

KEK_PREFIX = "ccr-kek-"
KEK_BITS = 2048
WRAP_ALG, WRAP_ENC = "RSA-OAEP-256", "A256GCM"
DEK_BYTES = 32


class GrantError(ValueError):
    """A grant that is missing, malformed, or does not wrap the expected key."""


@dataclass(frozen=True)
class GrantSubject:
    """One key a contract needs granted: what it is, who grants it, where its KEK lives."""
    subject: str      # "dataset:<provider did>/<name>", "model" or "output"
    label: str        # for messages: "dataset icmr", "model", "output key"
    grantor: str      # DID of the party that must grant it
    key_vault: str    # that party's vault (from the contract)
    key_id: str       # the data key the grant wraps (named in the package header)


def subjects(payload: dict) -> list[GrantSubject]:
    """Every grant a run of this contract needs: each dataset's, the model's, the output key's."""
    tdc = payload["tdc"]
    found = [GrantSubject(f"dataset:{contracts.dataset_identity(tdp['did'], dataset)}", f"dataset {dataset['name']}",
                          tdp["did"], tdp["key_vault"], dataset["key_id"])
             for tdp in payload["tdps"] for dataset in tdp["datasets"]]
    found.append(GrantSubject("model", "model", tdc["did"], tdc["key_vault"], tdc["model"]["key_id"]))
    found.append(GrantSubject("output", "output key", tdc["did"], tdc["key_vault"], tdc["output"]["key_id"]))
    return found


def kek_name(contract_digest: str, subject: str) -> str:
    """Key Vault name of the KEK of `subject` under the contract with this digest."""
    return KEK_PREFIX + hashlib.sha256(f"{contract_digest}\n{subject}".encode()).hexdigest()[:48]


def grant_blob(contract_digest: str, subject: str) -> str:
    """`<contract digest>/<kek name>.jwe` in the `grants` container."""
    return f"{contract_digest}/{kek_name(contract_digest, subject)}.jwe"


def grant_path(contract_digest: str, subject: str) -> str:
    return f"{storage_names.GRANTS}/{grant_blob(contract_digest, subject)}"


def kek_release_policy(authority_url: str, payload: dict, contract_digest: str) -> dict:
    """Release only to the attested trainer group of exactly this contract."""
    image = contracts.training(payload)["image"]
    return build_release_policy(authority_url,
                                training_hostdata(image, contract_digest, contracts.training_sidecar(payload)))


def inference_release_policy(authority_url: str, payload: dict, contract_digest: str) -> dict:
    """Release only to the attested inference group of exactly this contract (a requester's
    batch and output keys: the training group never gets them)."""
    return build_release_policy(authority_url, inference_hostdata(contracts.inference(payload)["image"],
                                                                  contract_digest, contracts.training_sidecar(payload)))


def state_release_policy(authority_url: str, payload: dict, contract_digest: str) -> dict:
    """The contract's model-state KEK (shared/model_states.py): its trainer group, and its
    inference group when the contract names one (that group restores the model from the state,
    never from the TDC); each pinned by its own host data."""
    image, sidecar = contracts.training(payload)["image"], contracts.training_sidecar(payload)
    inference = contracts.inference(payload)
    more = (inference_hostdata(inference["image"], contract_digest, sidecar),) if inference else ()
    return build_release_policy(authority_url, training_hostdata(image, contract_digest, sidecar), *more)


def wrap(dek: bytes, kek_public: rsa.RSAPublicKey, kek: str, key_id: str) -> str:
    """The grant: `dek` wrapped to the KEK's public key (JWE compact serialization)."""
    if len(dek) != DEK_BYTES:
        raise GrantError(f"a data key is {DEK_BYTES} bytes")
    header = {"alg": WRAP_ALG, "enc": WRAP_ENC, "kid": kek, "ccr_key_id": key_id}
    token = jwe.JWE(dek, json.dumps(header, sort_keys=True))
    token.add_recipient(jwk.JWK.from_pyca(kek_public))
    return token.serialize(compact=True)


def header(grant: str) -> dict:
    """The grant's protected header (no key needed): which KEK and which data key."""
    try:
        token = jwe.JWE()
        token.deserialize(grant.strip())
        value = token.jose_header
    except (JWException, ValueError, TypeError):
        raise GrantError("grant is not a JWE") from None
    if value.get("alg") != WRAP_ALG or value.get("enc") != WRAP_ENC:
        raise GrantError(f"grant must use {WRAP_ALG} with {WRAP_ENC}")
    return value


def check_header(grant: str, kek: str, key_id: str) -> None:
    """Raise GrantError unless the grant names this KEK and wraps this data key."""
    value = header(grant)
    if value.get("kid") != kek:
        raise GrantError("grant is wrapped under another key-encryption key")
    if value.get("ccr_key_id") != key_id:
        raise GrantError("grant wraps another data key than the contract names")


def unwrap(grant: str, kek_private: dict, kek: str, key_id: str) -> bytes:
    """The data key, with the released KEK (a private RSA JWK dict)."""
    check_header(grant, kek, key_id)
    try:
        token = jwe.JWE()
        token.deserialize(grant.strip(), key=jwk.JWK(**{k: v for k, v in kek_private.items()
                                                        if k not in ("key_ops", "kid")}))
        dek = token.payload
    except (JWException, ValueError, TypeError):
        raise GrantError("grant does not unwrap with the released key-encryption key") from None
    if len(dek) != DEK_BYTES:
        raise GrantError(f"grant does not wrap a {DEK_BYTES}-byte data key")
    return dek
