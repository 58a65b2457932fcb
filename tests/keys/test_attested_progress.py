"""Attested progress (shared/attested_progress.py) against the real MAA twin, SKR sidecar twin
and Azurite: the run page's "epoch i of N, epsilon so far" is written only by the attested
trainer of this very run. Each forgery is what anyone holding the topic key could send; none
changes the run record."""
from __future__ import annotations

import uuid

import pytest
from azure.storage.blob import BlobServiceClient
from jwcrypto import jwk

from shared import attested_outcome, attested_progress
from shared.cce_policy import hostdata_of
from shared.run_records import RunRecords
from tests.keys.test_attested_outcome import ATTACKERS_POLICY, NONCE, PLANNED, POLICY, attested, outcome, sidecars  # noqa: F401
from trainer_container.skr_client import SkrClient


@pytest.fixture
def records(azurite):
    return RunRecords(BlobServiceClient.from_connection_string(azurite))


@pytest.fixture
def run_id(records) -> str:
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    records.create(run_id, "progress-test", "d" * 64)
    records.enter_phase(run_id, "training")
    records.keep_nonce(run_id, NONCE)
    return run_id


def progress_event(sidecar, maa, run_id, epoch=1, epochs=5, epsilon=0.4, nonce=NONCE, signer=None,
                   statement=None) -> dict:
    """A progress event as the trainer makes it (a token binding the signer's key, run id, nonce)."""
    signer = signer or jwk.JWK.generate(kty="EC", crv="P-256")
    token = SkrClient(sidecar.url, maa.url, sidecar._ca_bundle).attest(
        attested_outcome.runtime_data(signer.export_public(as_dict=True), run_id, nonce))
    statement = statement or attested_progress.statement(run_id, nonce, epoch, epochs, epsilon)
    return {"run_id": run_id, "attestation": token, "progress": attested_outcome.sign(statement, signer)}


def record(records, event, maa, tls, nonce) -> bool:
    return attested_progress.record(records, event, nonce, hostdata_of(POLICY), maa.url, PLANNED, str(tls.ca_path))


def test_the_attested_trainers_progress_is_recorded_and_only_forward(sidecars, maa, tls, records, run_id):
    sidecar, key = sidecars(POLICY), jwk.JWK.generate(kty="EC", crv="P-256")
    assert record(records, progress_event(sidecar, maa, run_id, epoch=2, signer=key), maa, tls, records.nonce(run_id))
    progress = records.get(run_id)["progress"]
    assert {k: progress[k] for k in ("epoch", "epochs", "epsilon_spent")} == {"epoch": 2, "epochs": 5,
                                                                             "epsilon_spent": 0.4}
    stale = progress_event(sidecar, maa, run_id, epoch=1, epsilon=0.2, signer=key)  # late delivery of epoch 1
    assert not record(records, stale, maa, tls, records.nonce(run_id))
    assert records.get(run_id)["progress"] == progress


def test_forged_progress_changes_nothing(sidecars, maa, tls, records, run_id):
    sidecar = sidecars(POLICY)
    before = records.get(run_id)
    unattested = {"run_id": run_id, "progress": "e30.e30.e30"}
    other_nonce = progress_event(sidecar, maa, run_id, nonce="earlier-nonce")  # a replay of another run
    attackers_group = progress_event(sidecars(ATTACKERS_POLICY), maa, run_id)
    invalid_token = {**progress_event(sidecar, maa, run_id), "attestation": "x.y.z"}
    unbound = {**progress_event(sidecar, maa, run_id),
               "progress": attested_outcome.sign(attested_progress.statement(run_id, NONCE, 1, 5, 0.1),
                                                 jwk.JWK.generate(kty="EC", crv="P-256"))}
    over_plan = progress_event(sidecar, maa, run_id, epsilon=PLANNED + 1)
    beyond_epochs = progress_event(sidecar, maa, run_id, epoch=6, epochs=5)
    an_outcome = progress_event(sidecar, maa, run_id, statement=outcome(run_id=run_id))  # not a progress statement
    for forged in (unattested, other_nonce, attackers_group, invalid_token, unbound, over_plan, beyond_epochs,
                   an_outcome):
        assert not record(records, forged, maa, tls, records.nonce(run_id))
    assert not record(records, progress_event(sidecar, maa, run_id), maa, tls, None)  # no trainer deployed
    assert records.get(run_id) == before and "progress" not in before


def test_a_progress_statement_is_not_an_outcome(sidecars, maa, tls, run_id):
    event = progress_event(sidecars(POLICY), maa, run_id)
    event["outcome"] = event.pop("progress")
    with pytest.raises(attested_outcome.OutcomeRejected, match="no valid status"):
        attested_outcome.verify(event, run_id, NONCE, hostdata_of(POLICY), maa.url, PLANNED, str(tls.ca_path))


def test_a_finished_run_takes_no_more_progress(sidecars, maa, tls, records, run_id):
    records.finish(run_id, {"status": "succeeded"})
    assert not record(records, progress_event(sidecars(POLICY), maa, run_id), maa, tls, NONCE)
    assert "progress" not in records.get(run_id)
