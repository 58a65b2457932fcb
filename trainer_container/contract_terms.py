"""The parts of the contract payload the trainer acts on (see docs/INTERFACES.md), checked
up front so a malformed contract fails before any key is asked for or any byte downloaded."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from shared.pipeline import JoinSpec

SHA256 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class ContractError(ValueError):
    """The contract lacks something the trainer needs."""


@dataclass(frozen=True)
class PackageRef:
    name: str
    container: str
    blob: str
    sha256: str
    key_kid: str


@dataclass(frozen=True)
class ContractTerms:
    contract_id: str
    datasets: tuple[PackageRef, ...]
    epsilon_limit: float  # the smallest epsilon_threshold of the datasets
    delta: float
    model: PackageRef
    output_key_kid: str
    join: JoinSpec

    @classmethod
    def from_payload(cls, payload: dict) -> "ContractTerms":
        try:
            datasets = [d for tdp in payload["tdps"] for d in tdp["datasets"]]
            refs = tuple(_ref(d["name"], d) for d in datasets)
            thresholds = [float(d["epsilon_threshold"]) for d in datasets]
            model = _ref("model", payload["tdc"]["model"])
            output_kid = payload["tdc"]["output"]["key_kid"]
            delta = float(payload["privacy"]["delta"])
            join = JoinSpec.from_dict(payload["pipeline"]["join"])
            contract_id = str(payload["contract_id"])
        except KeyError as exc:
            raise ContractError(f"contract payload lacks {exc}") from None
        except TypeError:
            raise ContractError("contract payload has a field of the wrong type") from None
        if not refs or not all(math.isfinite(t) and t > 0 for t in thresholds):
            raise ContractError("contract needs datasets with positive epsilon_threshold values")
        if not 0 < delta < 1:
            raise ContractError("contract privacy.delta must be in (0, 1)")
        missing = {d.name for d in join.datasets} - {r.name for r in refs}
        if missing:
            raise ContractError(f"join names dataset(s) not in the contract: {', '.join(sorted(missing))}")
        return cls(contract_id, refs, min(thresholds), delta, model, str(output_kid), join)


def _ref(name: str, entry: dict) -> PackageRef:
    blob = str(entry["blob"])
    container, _, path = blob.partition("/")
    sha256 = str(entry["sha256"]).lower()
    if not NAME.match(str(name)):
        raise ContractError("contract dataset names must be plain names")
    if not container or not path or not SHA256.match(sha256):
        raise ContractError(f"contract entry {name} needs a 'container/blob' path and a sha256")
    return PackageRef(str(name), container, path, sha256, str(entry["key_kid"]))
