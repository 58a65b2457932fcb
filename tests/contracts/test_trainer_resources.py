"""A contract's `workloads.training.resources`: optional, within what a confidential ACI group
offers the trainer, refused at validation (before anyone signs, before any deployment)."""
from __future__ import annotations

import json

import pytest

from shared import contract as contracts
from shared import trainer_resources
from tests.contracts.test_cli import ccr, identities_with_budgets, ledger, new_contract  # noqa: F401 - fixtures


@pytest.mark.parametrize("resources, reason", [
    ({"cpu": 8, "memory_gb": 4}, (r"workloads\.training\.resources cpu 8 exceeds 3\.5, the most a trainer can have "
                                  r"in a confidential container group \(4 CPU / 16 GB per group")),
    ({"memory_gb": 16}, r"resources memory_gb 16 exceeds 15\.5"),
    ({"cpu": 0}, r"resources cpu must be > 0"),
    ({"memory_gb": -1}, r"resources memory_gb must be > 0"),
    ({"cpu": "2"}, r"resources cpu must be a finite number"),
    ({"cpu": True}, r"resources cpu must be a finite number"),
    ({"gpu": 1}, r"resources has unknown fields gpu"),
    ([2, 4], r"resources must be an object"),
])
def test_resources_beyond_a_confidential_group_are_refused(payload, resources, reason):
    payload["workloads"]["training"]["resources"] = resources
    with pytest.raises(contracts.MalformedContract, match=reason):
        contracts.validate_payload(payload)


def test_resources_are_optional_and_default_to_the_fixed_values(payload):
    training = contracts.training(contracts.validate_payload(payload))
    assert trainer_resources.of_training(training) == (1.0, 2.0)
    training["resources"] = {"cpu": 3.5, "memory_gb": 4.4}   # the 10 M-row join needs 4.4 GB
    assert trainer_resources.of_training(contracts.training(contracts.validate_payload(payload))) == (3.5, 4.4)
    training["resources"] = {"memory_gb": 8}
    assert trainer_resources.of_training(contracts.training(contracts.validate_payload(payload))) == (1.0, 8.0)


def test_ccr_contract_new_writes_and_refuses_resources(ccr, ledger, tmp_path):  # noqa: F811 - fixtures
    party_dids = identities_with_budgets(ccr, tmp_path)
    status, _, err = new_contract(ccr, tmp_path, party_dids, **{"--cpu": "6"})
    assert status == 1 and "resources cpu 6 exceeds 3.5" in err
    assert not (tmp_path / "payload.json").exists()
    status, _, err = new_contract(ccr, tmp_path, party_dids, **{"--cpu": "2", "--memory-gb": "4.5"})
    assert status == 0, err
    payload = contracts.validate_payload(json.loads((tmp_path / "payload.json").read_text()))
    assert payload["workloads"]["training"]["resources"] == {"cpu": 2.0, "memory_gb": 4.5}
