"""The terms the trainer takes from a verified contract, and the contracts it refuses before
any key: malformed payloads (the schema, checked inside the envelope) and joins over datasets
the contract does not have."""
import copy

import cbor2
import pytest

from local_emulator import covid_reference as covid_model
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from shared.container_group import policy_template_sha256
from trainer_container.consent import ConsentError, verified_contract
from trainer_container.contract_terms import ContractError, ContractTerms

SHA = "ab" * 32
IMAGE = f"ccr-trainer@sha256:{'a' * 64}"
PARTIES = ("tdc", "icmr", "cowin", "index")


@pytest.fixture(scope="module")
def identities() -> dict[str, dids.Identity]:
    return {name: dids.Identity.generate(f"did:web:parties.test:{name}") for name in PARTIES}


@pytest.fixture(scope="module")
def resolve(identities):
    documents = {identity.did: identity.document() for identity in identities.values()}
    return lambda did: documents[did]


def payload(identities) -> dict:
    datasets = lambda name, asked: {"did": identities[name].did, "key_vault": f"https://{name}.vault.test",
                                    "datasets": [{"name": name, "version": 1, "blob": f"datasets/{name}/{name}-1.ccr",
                                                  "sha256": SHA, "key_id": f"{name}-1", "epsilon": asked,
                                                  "budget": budget_declaration.declare(identities[name], name, 4.0,
                                                                                       1e-5)}]}
    return {"schema_version": 2, "contract_id": "c", "purpose": "covid outcome model",
            "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z",
            "privacy": {"delta": 1e-5}, "evaluation": {"validation_split": 0.25, "min_joined_rows": 500},
            "tdc": {"did": identities["tdc"].did, "key_vault": "https://tdc.vault.test",
                    "model": {"blob": "models/model/m-1.ccr", "sha256": SHA, "key_id": "m-1"},
                    "output": {"key_id": "o-1"}},
            "tdps": [datasets("icmr", 2.0), datasets("cowin", 1.5), datasets("index", 3.0)],
            "workloads": {"training": {"image": IMAGE, "policy_template_sha256": policy_template_sha256(IMAGE),
                                       "join": covid_model.covid_join_spec(), "deadline_seconds": 600}}}


def terms_of(body: dict, identities, resolve) -> ContractTerms:
    envelope = contracts.sign_contract(body, list(identities.values()))
    return ContractTerms.from_contract(verified_contract(envelope, contracts.payload_digest(
        contracts.canonical_json(body)), resolve))


def test_terms_take_the_smallest_asked_epsilon_the_evaluation_and_split_blob_paths(identities, resolve):
    body = payload(identities)
    terms = terms_of(body, identities, resolve)
    assert terms.epsilon_limit == 1.5 and terms.delta == 1e-5  # what the contract asks, not the thresholds (4.0)
    assert terms.digest == contracts.payload_digest(contracts.canonical_json(body))
    assert (terms.validation_split, terms.min_joined_rows) == (0.25, 500)
    assert (terms.model.container, terms.model.blob) == ("models", "model/m-1.ccr")
    assert [d.name for d in terms.datasets] == ["icmr", "cowin", "index"]
    assert [(d.container, d.blob) for d in terms.datasets][0] == ("datasets", "icmr/icmr-1.ccr")
    # each key reaches the trainer through its owner's grant, from its owner's vault
    icmr = terms.datasets[0].grant
    assert (icmr.subject, icmr.grantor, icmr.key_vault, icmr.key_id) == \
        (f"dataset:{identities['icmr'].did}/icmr", identities["icmr"].did, "https://icmr.vault.test", "icmr-1")
    assert (terms.model.grant.subject, terms.model.grant.key_id, terms.model.grant.key_vault) == \
        ("model", "m-1", "https://tdc.vault.test")
    assert (terms.output.subject, terms.output.key_id, terms.output.grantor) == ("output", "o-1", identities["tdc"].did)


def unsigned_envelope(body: dict) -> bytes:
    """An envelope around `body` as is (new_envelope would refuse a malformed payload)."""
    protected = cbor2.dumps({3: contracts.PAYLOAD_CONTENT_TYPE})
    return cbor2.dumps(cbor2.CBORTag(contracts.COSE_SIGN_TAG, [protected, {}, contracts.canonical_json(body), []]))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.pop("privacy"), "payload lacks privacy"),
    (lambda p: p["tdps"][0]["datasets"][0].update(name="../../etc"), r"name must be letters, digits"),
    (lambda p: p["tdps"][0]["datasets"][0].update(sha256="nope"), "sha256 must be 64 lowercase hex"),
    (lambda p: p["tdps"][0]["datasets"][0].update(budget="4.0"), "budget: a budget declaration is a compact JWS"),
    (lambda p: p["tdps"][0]["datasets"][0].update(epsilon=5.0), "must not exceed the provider's declared lifetime"),
    (lambda p: p["tdps"][0]["datasets"][0].update(key_id="https://icmr.vault.test/keys/icmr/1"),
     "not a Key Vault URL"),
    (lambda p: p["privacy"].update(delta=1), "delta"),
    (lambda p: p["evaluation"].update(validation_split=0.9), r"validation_split must be in \[0.1, 0.5\]"),
    (lambda p: p["evaluation"].update(min_joined_rows=0), "min_joined_rows must be an integer >= 1"),
    (lambda p: p.update(schema_version=1), "schema_version must be 2"),
    (lambda p: p.update(tdps="icmr"), "tdps must be a non-empty list"),
])
def test_malformed_contracts_are_refused(identities, mutate, message):
    bad = copy.deepcopy(payload(identities))
    mutate(bad)
    with pytest.raises(ConsentError, match="the contract envelope is unusable: .*" + message):
        verified_contract(unsigned_envelope(bad), contracts.payload_digest(contracts.canonical_json(bad)))


def test_a_join_over_a_dataset_the_contract_lacks_is_refused(identities, resolve):
    bad = copy.deepcopy(payload(identities))
    bad["tdps"].pop()
    with pytest.raises(ContractError, match="not in the contract: index"):
        terms_of(bad, {n: identities[n] for n in PARTIES[:3]}, resolve)
