"""What the container group tells the trainer, all through environment variables:

| variable | meaning |
|---|---|
| `CCR_RUN_ID` | the run (`run-<16 hex>`); names the output blob and the events |
| `CCR_CONTRACT` | the contract payload JSON (or `CCR_CONTRACT_URL`: where to GET it) |
| `CCR_BLOB_URLS` | JSON object: blob path (`container/name`) -> SAS URL; read-only for each |
|   | input, create-only for `outputs/<run_id>/output.ccr`. Secret: never printed |
| `CCR_SKR_URL` | the SKR sidecar (`POST /key/release`) |
| `CCR_MAA_URL` | the attestation authority the sidecar attests with |
| `CCR_EVENTGRID_TOPIC_URL`, `CCR_EVENTGRID_KEY` | topic for `CCR.Trainer.Completed` / `.Failed` |
| `CCR_EPSILON_BUDGET` | optional: the datasets' epsilon left after earlier runs (set by the |
|   | orchestration); the run's epsilon stays within it and within the contract's thresholds |
| `CCR_CA_BUNDLE` | PEM of the CA of the loopback TLS twins (optional; system CAs otherwise) |
`CCR_KEYVAULT_URL` is accepted but not needed: each key's vault comes from its key id.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import requests

RUN_ID = re.compile(r"^run-[0-9a-f]{16}$")


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
    contract: dict
    blob_urls: dict[str, str] = field(repr=False)  # SAS URLs are secrets
    skr_url: str
    maa_url: str
    ca_bundle: str | bool
    epsilon_budget: float | None = None

    @classmethod
    def from_environ(cls) -> "TrainerEnvironment":
        run_id = _required("CCR_RUN_ID")
        if not RUN_ID.match(run_id):
            raise SettingsError("CCR_RUN_ID is not a run id")
        ca_bundle = os.environ.get("CCR_CA_BUNDLE") or True
        return cls(run_id, _contract(ca_bundle), _blob_urls(), _required("CCR_SKR_URL"),
                   _required("CCR_MAA_URL"), ca_bundle, _epsilon_budget())

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


def _epsilon_budget() -> float | None:
    text = os.environ.get("CCR_EPSILON_BUDGET")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SettingsError("CCR_EPSILON_BUDGET is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError("CCR_EPSILON_BUDGET must be a positive number")
    return value


def _contract(ca_bundle: str | bool) -> dict:
    text = os.environ.get("CCR_CONTRACT")
    if not text:
        url = _required("CCR_CONTRACT_URL")
        response = requests.get(url, verify=ca_bundle, timeout=60)
        if response.status_code != 200:
            raise SettingsError(f"contract not available from CCR_CONTRACT_URL (HTTP {response.status_code})")
        text = response.text
    try:
        contract = json.loads(text)
    except ValueError:
        raise SettingsError("the contract is not JSON") from None
    if not isinstance(contract, dict):
        raise SettingsError("the contract is not a JSON object")
    return contract
