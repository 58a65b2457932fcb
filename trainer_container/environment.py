"""What the container group tells the trainer, all through environment variables:

| variable | meaning |
|---|---|
| `CCR_RUN_ID` | the run (`run-<16 hex>`); names the output blob and the events |
| `CCR_CONTRACT` | the signed contract: base64 of its COSE_Sign envelope (verified by the trainer) |
| `CCR_CONTRACT_DIGEST` | sha256 hex of the contract payload; the group's CCE policy requires exactly |
|   | this value, so it is measured into the host data every key grant pins |
| `CCR_RUN_NONCE` | drawn when the group is deployed: the completion event's attested outcome |
|   | carries it, so no event made before this group existed, or for another run, is believed |
| `CCR_BLOB_URLS` | JSON object: blob path (`container/name`) -> SAS URL; read-only for each |
|   | input, create-only for `outputs/<run_id>/output.ccr`. Secret: never printed |
| `CCR_SKR_URL` | the SKR sidecar (`POST /key/release`) |
| `CCR_MAA_URL` | the attestation authority the sidecar attests with |
| `CCR_EVENTGRID_TOPIC_URL`, `CCR_EVENTGRID_KEY` | topic for `CCR.Trainer.Completed` / `.Failed` |
| `CCR_CA_BUNDLE` | PEM of the CA of the loopback TLS twins (optional; system CAs otherwise) |
| `CCR_KEYVAULT_URL` | the control plane's vault holding the contract's state KEK (a contract that |
|   | keeps its model: continued training or inference, shared/model_states.py); its blobs' SAS are in CCR_BLOB_URLS |
Each key-encryption key's vault comes from the signed contract (its grantor's `key_vault`).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field

RUN_ID = re.compile(r"^run-[0-9a-f]{16}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")


class SettingsError(ValueError):
    """A required setting is missing or malformed."""


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SettingsError(f"environment variable {name} is not set")
    return value


@dataclass(frozen=True)
class TrainerEnvironment:
    run_id: str
    nonce: str
    envelope: bytes = field(repr=False)
    contract_digest: str
    blob_urls: dict[str, str] = field(repr=False)  # SAS URLs are secrets
    skr_url: str
    maa_url: str
    ca_bundle: str | bool
    state_vault: str | None = None  # the state KEK's vault (a contract that keeps its model)

    @classmethod
    def from_environ(cls) -> "TrainerEnvironment":
        run_id = _required("CCR_RUN_ID")
        if not RUN_ID.match(run_id):
            raise SettingsError("CCR_RUN_ID is not a run id")
        digest = _required("CCR_CONTRACT_DIGEST")
        if not DIGEST.match(digest):
            raise SettingsError("CCR_CONTRACT_DIGEST is not a sha256 hex digest")
        ca_bundle = os.environ.get("CCR_CA_BUNDLE") or True
        return cls(run_id, _required("CCR_RUN_NONCE"), _envelope(), digest, _blob_urls(), _required("CCR_SKR_URL"),
                   _required("CCR_MAA_URL"), ca_bundle, os.environ.get("CCR_KEYVAULT_URL") or None)

    def blob_url(self, path: str) -> str:
        """The SAS URL for blob `container/name`; the trainer reaches no blob without one."""
        url = self.blob_urls.get(path)
        if not url:
            raise SettingsError(f"CCR_BLOB_URLS has no URL for blob {path}")
        return url


def _blob_urls() -> dict[str, str]:
    text = _required("CCR_BLOB_URLS")
    try:
        urls = json.loads(text)
    except ValueError:
        urls = None
    if not isinstance(urls, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in urls.items()):
        raise SettingsError("CCR_BLOB_URLS is not a JSON object of blob paths to URLs")
    return urls


def _envelope() -> bytes:
    try:
        return base64.b64decode(_required("CCR_CONTRACT"), validate=True)
    except binascii.Error:
        raise SettingsError("CCR_CONTRACT is not base64 of a contract envelope") from None
