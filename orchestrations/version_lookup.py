"""The ledger's record of a dataset's versions, as the control plane reads it (GET /versions:
public, in version order; local_emulator/ledger_versions.py). The declarations are verified by
whoever uses them (shared/version_budget.py): the ledger is trusted for order and completeness,
not for signatures."""
from __future__ import annotations

import requests

from shared import settings

TIMEOUT_SECONDS = 30


def declarations(provider: str, dataset: str) -> list[str]:
    """The dataset's version declarations (compact JWS), oldest first; [] if none."""
    response = requests.get(f"{settings.require('CCR_LEDGER_URL')}/versions",
                            params={"provider": provider, "dataset": dataset},
                            timeout=TIMEOUT_SECONDS, verify=settings.ca_bundle())
    if response.status_code == 404:
        return []
    response.raise_for_status()
    found = response.json().get("declarations")
    if not isinstance(found, list) or not all(isinstance(token, str) for token in found):
        raise ValueError("the ledger's version record is not a list of declarations")
    return found
