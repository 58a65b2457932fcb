"""Attested outcomes (shared/attested_outcome.py) against the real MAA twin and SKR sidecar twin:
only the attested trainer of this very run, with this run's nonce, can sign an outcome the
control plane believes. Each forgery below is what a party holding the topic key, or running
its own confidential container group, could send."""
from __future__ import annotations

import base64
import json
import os

import pytest
from jwcrypto import jwk

from local_emulator.attestation import MaaTwin
from local_emulator.sevsnp import HardwareRoot
from local_emulator.skr_sidecar import SkrSidecar
from shared import attested_outcome
from shared.cce_policy import hostdata_of
from shared.container_group import training_cce_policy
from trainer_container.skr_client import SkrClient

IMAGE = "ccr-trainer@sha256:" + "a1" * 32
POLICY = training_cce_policy(IMAGE, "c0" * 32)
ATTACKERS_POLICY = training_cce_policy(IMAGE, "e1" * 32)  # the attacker's own contract, same image
RUN, NONCE = "run-0123456789abcdef", "9f4c1d2e-0000-4000-8000-000000000001"
PLANNED = 1.5


@pytest.fixture
def sidecars(hardware_root, tls, token):
    started = []

    def make(policy: str) -> SkrSidecar:
        sidecar = SkrSidecar(hardware_root, policy, str(tls.ca_path), token, allowed_uid=os.getuid()).start()
        started.append(sidecar)
        return sidecar
    yield make
    for sidecar in started:
        sidecar.stop()


def outcome(**changes) -> dict:
    return {"run_id": RUN, "nonce": NONCE, "status": "succeeded", "data_read": True,
            "output_blob": "https://x/outputs/o.ccr", "output_blake3": "ab" * 32,
            "privacy": {"epsilon": 1.49, "delta": 1e-5}, "metrics_summary": {"accuracy": 0.9}, **changes}


def attested(sidecar, maa, statement: dict, run_id=RUN, nonce=NONCE, signer=None, bound=None) -> dict:
    """An event as the trainer makes it: a token binding `bound` (default: the signer's public
    key), run id and nonce, and the statement signed by `signer` (default: a fresh key)."""
    signer = signer or jwk.JWK.generate(kty="EC", crv="P-256")
    bound = bound or signer
    token = SkrClient(sidecar.url, maa.url, sidecar._ca_bundle).attest(
        attested_outcome.runtime_data(bound.export_public(as_dict=True), run_id, nonce))
    return {"run_id": run_id, "status": statement["status"], "attestation": token,
            "outcome": attested_outcome.sign(statement, signer)}


def verify(event, maa, tls, policy=POLICY, nonce=NONCE):
    return attested_outcome.verify(event, RUN, nonce, hostdata_of(policy), maa.url, PLANNED, str(tls.ca_path))


def test_the_attested_trainer_of_this_run_is_believed(sidecars, maa, tls):
    event = attested(sidecars(POLICY), maa, outcome())
    assert verify(event, maa, tls) == outcome()
    failed = outcome(status="failed", data_read=False, error_class="KeyReleaseError", message="refused")
    assert verify(attested(sidecars(POLICY), maa, failed), maa, tls)["data_read"] is False


def test_a_forged_event_without_attestation_is_not_believed(maa, tls):
    forged = {"run_id": RUN, "status": "succeeded", "privacy": {"epsilon": -50}, "output_blake3": "0" * 64}
    with pytest.raises(attested_outcome.OutcomeRejected, match="no attestation token"):
        verify(forged, maa, tls)


def test_the_attackers_own_attested_group_is_not_this_runs(sidecars, maa, tls):
    """A genuine token, the right run id and even the right nonce, but for the host data of the
    attacker's own contract: refused."""
    event = attested(sidecars(ATTACKERS_POLICY), maa, outcome(privacy={"epsilon": 0.0}))
    with pytest.raises(attested_outcome.OutcomeRejected, match="x-ms-sevsnpvm-hostdata"):
        verify(event, maa, tls)


def test_a_replayed_event_of_an_earlier_run_is_refused(sidecars, maa, tls):
    earlier = attested(sidecars(POLICY), maa, outcome(nonce="earlier-nonce"), nonce="earlier-nonce")
    with pytest.raises(attested_outcome.OutcomeRejected, match="another run"):
        verify(earlier, maa, tls)


def test_right_host_data_but_another_run_id_or_nonce_in_the_token(sidecars, maa, tls):
    for run_id, nonce in (("run-ffffffffffffffff", NONCE), (RUN, "another-nonce")):
        event = attested(sidecars(POLICY), maa, outcome(), run_id=run_id, nonce=nonce)
        with pytest.raises(attested_outcome.OutcomeRejected, match="attestation token is for another run"):
            verify(event, maa, tls)


def test_an_outcome_signed_by_a_key_the_token_does_not_bind(sidecars, maa, tls):
    event = attested(sidecars(POLICY), maa, outcome(), bound=jwk.JWK.generate(kty="EC", crv="P-256"))
    with pytest.raises(attested_outcome.OutcomeRejected, match="not signed by the key"):
        verify(event, maa, tls)


def test_an_outcome_altered_after_signing(sidecars, maa, tls):
    event = attested(sidecars(POLICY), maa, outcome())
    header, payload, signature = event["outcome"].split(".")
    forged = json.dumps({**outcome(), "privacy": {"epsilon": 0.0}}, sort_keys=True).encode()
    event["outcome"] = ".".join([header, base64.urlsafe_b64encode(forged).decode().rstrip("="), signature])
    with pytest.raises(attested_outcome.OutcomeRejected, match="not signed by the key"):
        verify(event, maa, tls)


@pytest.mark.parametrize("privacy", [{"epsilon": -50}, {"epsilon": PLANNED + 0.01}, {"epsilon": None},
                                     {"epsilon": "1.0"}, {}])
def test_negative_over_plan_or_missing_epsilon_is_refused(sidecars, maa, tls, privacy):
    event = attested(sidecars(POLICY), maa, outcome(privacy=privacy))
    with pytest.raises(attested_outcome.OutcomeRejected, match="epsilon"):
        verify(event, maa, tls)


def test_a_token_from_another_authority_is_refused(sidecars, maa, tls, tmp_path):
    """Another attestation service (the attacker's own, trusting a hardware root of its own)
    signs whatever it likes: its tokens are not our authority's."""
    rogue_root = HardwareRoot.load_or_create(tmp_path / "rogue")
    rogue = MaaTwin(tmp_path / "rogue-maa", tls, [rogue_root.public_pem]).start()
    try:
        sidecar = SkrSidecar(rogue_root, POLICY, str(tls.ca_path), "t", allowed_uid=os.getuid()).start()
        try:
            event = attested(sidecar, rogue, outcome())
        finally:
            sidecar.stop()
    finally:
        rogue.stop()
    with pytest.raises(attested_outcome.OutcomeRejected, match="not issued by our attestation authority"):
        verify(event, maa, tls)
