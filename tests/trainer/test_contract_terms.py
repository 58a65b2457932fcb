import copy

import pytest

from local_emulator import covid_reference as covid_model
from trainer_container.contract_terms import ContractError, ContractTerms

SHA = "ab" * 32


def payload() -> dict:
    datasets = lambda name, eps: {"datasets": [{"name": name, "blob": f"datasets/c/{name}.ccr", "sha256": SHA,
                                                "key_kid": f"https://v.test/keys/{name}/1", "epsilon_threshold": eps}]}
    return {"contract_id": "c", "privacy": {"delta": 1e-5},
            "tdc": {"model": {"blob": "models/c/model.ccr", "sha256": SHA, "key_kid": "https://v.test/keys/m/1"},
                    "output": {"key_kid": "https://v.test/keys/o/1"}},
            "tdps": [datasets("icmr", 2.0), datasets("cowin", 1.5), datasets("index", 3.0)],
            "pipeline": {"join": covid_model.covid_join_spec()}}


def test_terms_take_the_smallest_threshold_and_split_blob_paths():
    terms = ContractTerms.from_payload(payload())
    assert terms.epsilon_limit == 1.5 and terms.delta == 1e-5
    assert (terms.model.container, terms.model.blob) == ("models", "c/model.ccr")
    assert [d.name for d in terms.datasets] == ["icmr", "cowin", "index"]


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.pop("privacy"), "lacks 'privacy'"),
    (lambda p: p["tdps"][0]["datasets"][0].update(name="../../etc"), "plain names"),
    (lambda p: p["tdps"][0]["datasets"][0].update(sha256="nope"), "sha256"),
    (lambda p: p["tdps"][0]["datasets"][0].update(epsilon_threshold=-1), "positive epsilon_threshold"),
    (lambda p: p["privacy"].update(delta=1), "delta"),
    (lambda p: p["tdps"].pop(), "not in the contract: index"),
    (lambda p: p.update(tdps="icmr"), "field of the wrong type"),
])
def test_malformed_contracts_are_refused(mutate, message):
    bad = copy.deepcopy(payload())
    mutate(bad)
    with pytest.raises(ContractError, match=message):
        ContractTerms.from_payload(bad)
