"""The trainer takes a continued run only for a version its provider declared, of a dataset of
its contract, after the contract's version, and only under that version's own run id
(trainer_container/continued_run.py): each forged or mismatched continuation is refused with a
clear error, before any key or data is asked for."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from shared import continuation, storage_names
from shared import did as dids
from shared import version_declaration as versions
from tests.contracts.conftest import sha
from trainer_container.continued_run import ContinuationError, checked

DIGEST = sha("the contract")


@pytest.fixture
def allowing(payload) -> dict:
    payload["workloads"]["training"]["continued_training"] = True
    return payload


def make(payload: dict, provider: dids.Identity, version: int = 2, declared_by: dids.Identity | None = None,
         **changes) -> tuple[continuation.Continuation, str]:
    """A continuation of `provider`'s icmr dataset and the run id it should run under."""
    pin = {"blake3": sha(f"icmr-{version}")}
    token = versions.declare(declared_by or provider, "icmr", version, pin, False)
    made = continuation.Continuation(provider.did, "icmr", version,
                                     f"{storage_names.DATASETS}/{dids.did_name(provider.did)}/icmr/k.v{version}.ccr",
                                     pin, token, "run-0123456789abcdef", (f"{provider.did}/icmr",))
    run_id = continuation.run_id(payload["contract_id"], DIGEST, provider.did, "icmr", version)
    return replace(made, **changes), run_id


def document(made: continuation.Continuation) -> bytes:
    return json.dumps(made.to_dict()).encode()


def test_a_declared_version_of_the_contracts_dataset_is_taken(allowing, identities, resolve):
    made, run_id = make(allowing, identities["icmr"])
    assert checked(document(made), allowing, DIGEST, run_id, resolve) == made


def test_a_contract_that_does_not_allow_continued_training_takes_none(payload, identities, resolve):
    made, run_id = make(payload, identities["icmr"])
    with pytest.raises(ContinuationError, match="does not allow continued training"):
        checked(document(made), payload, DIGEST, run_id, resolve)


def test_a_declaration_signed_by_another_key_is_refused(allowing, identities, resolve):
    forger = dids.Identity.generate(identities["icmr"].did)   # the provider's DID, another key
    made, run_id = make(allowing, identities["icmr"], declared_by=forger)
    with pytest.raises(ContinuationError, match="does not verify"):
        checked(document(made), allowing, DIGEST, run_id, resolve)


def test_a_package_other_than_the_declared_one_is_refused(allowing, identities, resolve):
    made, run_id = make(allowing, identities["icmr"], pin={"blake3": sha("crafted rows")})
    with pytest.raises(ContinuationError, match="not the one its provider's declaration declares"):
        checked(document(made), allowing, DIGEST, run_id, resolve)


def test_one_versions_declaration_under_another_versions_run_is_refused(allowing, identities, resolve):
    made, _ = make(allowing, identities["icmr"], version=2)
    _, run_of_3 = make(allowing, identities["icmr"], version=3)
    with pytest.raises(ContinuationError, match="run id differs"):
        checked(document(made), allowing, DIGEST, run_of_3, resolve)


def test_the_contracts_own_version_is_not_a_continuation(allowing, identities, resolve):
    made, run_id = make(allowing, identities["icmr"], version=1)
    with pytest.raises(ContinuationError, match="not after the contract's version 1"):
        checked(document(made), allowing, DIGEST, run_id, resolve)


def test_a_package_outside_its_providers_dataset_is_refused(allowing, identities, resolve):
    made, run_id = make(allowing, identities["icmr"], blob="datasets/cowin/cowin/k.ccr")
    with pytest.raises(ContinuationError, match="not under its provider's dataset"):
        checked(document(made), allowing, DIGEST, run_id, resolve)


def test_a_malformed_continuation_is_refused(allowing, identities, resolve):
    _, run_id = make(allowing, identities["icmr"])
    for junk in (b"not json", b"{}", json.dumps({"provider": 1}).encode()):
        with pytest.raises(ContinuationError, match="not a valid continuation document"):
            checked(junk, allowing, DIGEST, run_id, resolve)
