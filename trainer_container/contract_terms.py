"""The parts of the signed contract (schema 2, docs/INTERFACES.md) the trainer acts on. The
payload has already passed `shared.contract.validate_payload` (inside the signature check,
trainer_container/consent.py); this only gathers the terms and checks what the schema alone
cannot (the join names the contract's datasets), before any key is asked for."""
from __future__ import annotations

from dataclasses import dataclass

from shared import contract as contracts
from shared import key_grants, package
from shared.pipeline import JoinSpec


class ContractError(ValueError):
    """The contract lacks something the trainer needs."""


@dataclass(frozen=True)
class PackageRef:
    """An encrypted input, and the grant through which its data key reaches the trainer."""
    name: str
    container: str
    blob: str
    pin: dict  # the package's commitment as the contract pins it: {"blake3": hex} or {"sha256": hex}
    grant: key_grants.GrantSubject


@dataclass(frozen=True)
class ContractTerms:
    contract_id: str
    digest: str
    datasets: tuple[PackageRef, ...]
    epsilon_limit: float  # the smallest epsilon the contract asks for any of its datasets
    delta: float
    validation_split: float
    min_joined_rows: int
    model: PackageRef
    output: key_grants.GrantSubject
    join: JoinSpec
    continued_training: bool = False  # a declared new version continues from the kept model state
    keeps_model_state: bool = False   # keep the trained state (continued training or inference: shared/model_states.py)
    weights_leave: bool = True        # the TDC's output carries the model (false: metrics and privacy report only)

    @classmethod
    def from_contract(cls, contract: contracts.Contract) -> "ContractTerms":
        payload = contract.payload
        grants = {s.subject: s for s in key_grants.subjects(payload)}
        refs = tuple(_ref(dataset["name"], dataset, grants[f"dataset:{contracts.dataset_identity(did, dataset)}"])
                     for did, dataset in contracts.datasets(payload))
        join = JoinSpec.from_dict(contracts.training(payload)["join"])
        missing = {d.name for d in join.datasets} - {r.name for r in refs}
        if missing:
            raise ContractError(f"join names dataset(s) not in the contract: {', '.join(sorted(missing))}")
        evaluation = payload["evaluation"]
        return cls(contract.contract_id, contract.digest, refs,
                   min(float(d["epsilon"]) for _, d in contracts.datasets(payload)),
                   float(payload["privacy"]["delta"]), float(evaluation["validation_split"]),
                   int(evaluation["min_joined_rows"]), _ref("model", payload["tdc"]["model"], grants["model"]),
                   grants["output"], join, contracts.continued_training(payload),
                   contracts.keeps_model_state(payload), contracts.weights_leave(payload))


def _ref(name: str, entry: dict, grant: key_grants.GrantSubject) -> PackageRef:
    container, _, path = entry["blob"].partition("/")
    pin = {k: entry[k] for k in package.COMMITMENTS.values() if k in entry}
    return PackageRef(name, container, path, pin, grant)
