"""Contract envelopes: four parties sign, verification accepts exactly that and refuses
every way a contract can be wrong, with the reason."""
from __future__ import annotations

import copy
from datetime import datetime, timezone

import cbor2
import pytest

from shared import contract as contracts
from shared import did as dids

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def sign_all(payload, identities):
    return contracts.sign_contract(payload, list(identities.values()))


def test_four_parties_sign_and_verify(payload, identities, resolve):
    envelope = sign_all(payload, identities)
    contract = contracts.verify_contract(envelope, resolve, NOW)
    assert contract.payload == payload
    assert contract.contract_id == payload["contract_id"]
    assert contract.digest == contracts.payload_digest(contracts.canonical_json(payload))
    assert set(contract.signers) == {i.did for i in identities.values()}
    header = cbor2.loads(cbor2.loads(envelope).value[3][0][0])
    assert header[1] == -7 and header[4] == identities["tdc"].key_ref.encode()
    assert header[contracts.CWT_CLAIMS] == {contracts.CWT_ISS: identities["tdc"].did}


def test_signing_order_does_not_change_the_digest(payload, identities, resolve):
    forward = contracts.verify_contract(sign_all(payload, identities), resolve, NOW)
    backward = contracts.verify_contract(
        contracts.sign_contract(payload, list(identities.values())[::-1]), resolve, NOW)
    assert forward.digest == backward.digest


def test_partial_envelopes_merge(payload, identities, resolve):
    parties = list(identities.values())
    first = contracts.sign_contract(payload, parties[:2])
    second = contracts.sign_contract(payload, parties[1:])
    merged = contracts.merge_envelopes(first, second)
    assert len(contracts.verify_contract(merged, resolve, NOW).signers) == 4


def test_unsigned(payload, resolve):
    with pytest.raises(contracts.UnsignedContract, match="no signature"):
        contracts.verify_contract(contracts.new_envelope(payload), resolve, NOW)


def test_payload_altered_after_signing(payload, identities, resolve):
    body = cbor2.loads(sign_all(payload, identities))
    altered = copy.deepcopy(payload)
    altered["tdps"][0]["datasets"][0]["epsilon"] = 1.0
    body.value[2] = contracts.canonical_json(altered)
    with pytest.raises(contracts.BadSignature, match="altered") as caught:
        contracts.verify_contract(cbor2.dumps(body), resolve, NOW)
    assert caught.value.http_status == 403


def test_expired_and_not_yet_valid(payload, identities, resolve):
    envelope = sign_all(payload, identities)
    with pytest.raises(contracts.ExpiredContract, match="expired at 2027-01-01"):
        contracts.verify_contract(envelope, resolve, datetime(2027, 1, 2, tzinfo=timezone.utc))
    with pytest.raises(contracts.NotYetValid, match="valid from 2026-01-01"):
        contracts.verify_contract(envelope, resolve, datetime(2025, 12, 31, tzinfo=timezone.utc))


def test_signer_who_is_not_a_party(payload, identities, documents, resolve):
    outsider = dids.Identity.generate(dids.did_web("127.0.0.1", 8443, "outsider"))
    documents[outsider.did] = outsider.document()
    envelope = sign_all(payload, identities)
    body = cbor2.loads(envelope)
    # add_signature refuses outsiders: take a valid outsider signature from another envelope
    forged = contracts.sign_contract(
        {**payload, "tdc": {**payload["tdc"], "did": outsider.did}}, [outsider])
    body.value[3].append(cbor2.loads(forged).value[3][0])
    with pytest.raises(contracts.UnknownSigner, match="outsider, not a party"):
        contracts.verify_contract(cbor2.dumps(body), resolve, NOW)
    with pytest.raises(contracts.UnknownSigner, match="not a party"):
        contracts.add_signature(contracts.new_envelope(payload), outsider)


def test_same_party_twice(payload, identities, resolve):
    body = cbor2.loads(sign_all(payload, identities))
    body.value[3].append(body.value[3][0])
    with pytest.raises(contracts.UnknownSigner, match="more than once"):
        contracts.verify_contract(cbor2.dumps(body), resolve, NOW)


def test_missing_party(payload, identities, resolve):
    parties = [i for name, i in identities.items() if name != "cowin"]
    envelope = contracts.sign_contract(payload, parties)
    with pytest.raises(contracts.MissingSigner, match=f"not signed by {identities['cowin'].did}"):
        contracts.verify_contract(envelope, resolve, NOW)


def test_right_did_wrong_key(payload, identities, resolve):
    impostor = dids.Identity(identities["icmr"].did, dids.Identity.generate(identities["icmr"].did).private_key)
    parties = [impostor if name == "icmr" else i for name, i in identities.items()]
    with pytest.raises(contracts.BadSignature, match=f"signature by {impostor.did}"):
        contracts.verify_contract(contracts.sign_contract(payload, parties), resolve, NOW)


def test_key_id_not_in_did_document(payload, identities, resolve):
    other = dids.Identity(identities["icmr"].did, identities["icmr"].private_key, key_id="key-9")
    parties = [other if name == "icmr" else i for name, i in identities.items()]
    with pytest.raises(contracts.BadSignature, match="key-9 is not"):
        contracts.verify_contract(contracts.sign_contract(payload, parties), resolve, NOW)


def test_unresolvable_signer_is_retryable(payload, identities):
    def offline(did):
        raise dids.DidResolutionError(f"cannot fetch the DID document of {did}")
    with pytest.raises(contracts.SignerUnavailable) as caught:
        contracts.verify_contract(sign_all(payload, identities), offline, NOW)
    assert caught.value.http_status == 503


@pytest.mark.parametrize("envelope, reason", [
    (b"", "empty"),
    (b"\xd8\x62\x84\x40", "not valid CBOR"),
    (b"\x01\x02", "trailing bytes"),
    (cbor2.dumps({"not": "cose"}), "not a COSE_Sign"),
    (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"{}"])), "not \\[protected"),
    (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"not json", []])), "not JSON"),
    (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b'{"contract_id": "x"}', []])), "schema_version must be 2"),
    (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b'{"contract_id": "x", "schema_version": 2}', []])), "lacks purpose"),
])
def test_malformed_envelopes(envelope, reason, resolve):
    with pytest.raises(contracts.MalformedContract, match=reason) as caught:
        contracts.verify_contract(envelope, resolve, NOW)
    assert caught.value.http_status == 400


def test_non_canonical_payload(payload, resolve):
    body = [b"", {}, contracts.canonical_json(payload) + b" ", []]
    with pytest.raises(contracts.MalformedContract, match="canonical"):
        contracts.verify_contract(cbor2.dumps(cbor2.CBORTag(98, body)), resolve, NOW)


def test_header_without_issuer(payload, identities, resolve):
    body = cbor2.loads(sign_all(payload, identities))
    body.value[3][0][0] = cbor2.dumps({1: -7, 4: identities["tdc"].key_ref.encode()})
    with pytest.raises(contracts.MalformedContract, match="issuer DID"):
        contracts.verify_contract(cbor2.dumps(body), resolve, NOW)


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p["tdps"][0]["datasets"][0].update(budget=0), "budget: a budget declaration is a compact JWS"),
    (lambda p: p["tdps"][0]["datasets"][0].update(epsilon=2.0), "must not exceed the provider's declared lifetime"),
    (lambda p: p["tdps"][0]["datasets"][0].update(budget=p["tdps"][1]["datasets"][0]["budget"]),
     "budget is a declaration for .*/cowin, not for .*/icmr"),
    (lambda p: p["privacy"].update(delta=2e-5), "must not exceed the declared lifetime delta of dataset icmr"),
    (lambda p: p["tdps"][0]["datasets"][0].update(version=0), "version must be an integer >= 1"),
    (lambda p: p["tdps"][0]["datasets"][0].update(key_id="https://kv/keys/icmr/1"), "not a Key Vault URL"),
    (lambda p: p["tdps"][0]["datasets"][0].update(key_id="model-1"), "their own key_id"),
    (lambda p: p["tdps"][0].update(key_vault="http://kv.test"), "Key Vault URL"),
    (lambda p: p["tdps"][0].pop("key_vault"), "lacks key_vault"),
    (lambda p: p.update(schema_version=1), "schema_version must be 2"),
    (lambda p: p["evaluation"].update(validation_split=0.0001), "validation_split must be in"),
    (lambda p: p["evaluation"].update(validation_split=0.9), "validation_split must be in"),
    (lambda p: p["evaluation"].update(min_joined_rows=0), "min_joined_rows must be an integer"),
    (lambda p: p["workloads"].update(continued_training={}), "continued_training are not supported"),
    (lambda p: p["workloads"]["training"].update(policy_template_sha256="x"), "64 lowercase hex"),
    (lambda p: p["tdps"][0]["datasets"][0].update(epsilon=True), "finite number"),
    (lambda p: p["privacy"].update(delta=1), "delta must be in"),
    (lambda p: p["tdps"][0]["datasets"][0].update(sha256="ABC"), "64 lowercase hex"),
    (lambda p: p["tdps"][0]["datasets"][0].update(blob="models/icmr/icmr-1.ccr"), "blob must be a path datasets/"),
    (lambda p: p["tdps"][0]["datasets"][0].update(blob="datasets/../runs/x.ccr"), "blob must be a path datasets/"),
    (lambda p: p["tdc"]["model"].update(blob="datasets/model/model-1.ccr"), "blob must be a path models/"),
    (lambda p: p.update(valid_until="2025-01-01T00:00:00Z"), "before valid_until"),
    (lambda p: p.update(valid_from="yesterday"), "RFC 3339"),
    (lambda p: p.update(tdps=[]), "tdps must be a non-empty list"),
    (lambda p: p["tdc"].update(did="https://not-a-did"), "did:web"),
    (lambda p: p["tdc"].update(did=p["tdps"][0]["did"]), "distinct DIDs"),
    (lambda p: p["workloads"]["training"].update(image="ccr-trainer:latest"), "pinned by digest"),
    (lambda p: p["workloads"]["training"].update(deadline_seconds=-5), "deadline_seconds must be an integer >= 1"),
    (lambda p: p["workloads"]["training"].update(skr_sidecar_image="mcr.microsoft.com/aci/skr:2.14"),
     r"workloads\.training\.skr_sidecar_image must pin the SKR sidecar by digest"),
    (lambda p: p.update(contract_id="../escape"), "contract_id must be"),
    (lambda p: p["tdps"][0]["datasets"][0].update(blake3="ab" * 32), "exactly one of sha256 or blake3"),
    (lambda p: p["tdc"]["model"].pop("sha256"), "model must pin its package by exactly one of sha256 or blake3"),
    (lambda p: p["tdps"][0]["datasets"][0].update(blake3=p["tdps"][0]["datasets"][0].pop("sha256").upper()),
     "blake3 must be 64 lowercase hex"),
])
def test_schema_violations(payload, mutate, reason):
    mutate(payload)
    with pytest.raises(contracts.MalformedContract, match=reason):
        contracts.new_envelope(payload)
    with pytest.raises(contracts.MalformedContract, match=reason):
        contracts.validate_payload(payload)


@pytest.mark.parametrize("value", ["yes", 1, None, "false"])
def test_continued_training_is_true_or_false(payload, value):
    payload["workloads"]["training"]["continued_training"] = value
    with pytest.raises(contracts.MalformedContract,
                       match=r"workloads\.training\.continued_training must be true or false"):
        contracts.validate_payload(payload)


def test_continued_training_is_off_unless_the_contract_allows_it(payload, identities, resolve):
    assert contracts.continued_training(contracts.validate_payload(payload)) is False  # older contracts: still valid
    payload["workloads"]["training"]["continued_training"] = True
    envelope = contracts.sign_contract(payload, list(identities.values()))
    assert contracts.continued_training(contracts.verify_contract(envelope, resolve, NOW).payload) is True


def test_verify_signatures_accepts_a_partial_envelope_and_refuses_any_bad_signature(
        payload, identities, documents, resolve):
    """What the ledger asks of a submission: at least one signature, each a party's and valid;
    parties may be missing and the validity window is the webhook's business."""
    partial = contracts.sign_contract(payload, [identities["tdc"], identities["icmr"]])
    contract = contracts.verify_signatures(partial, resolve)
    assert contract.signers == (identities["tdc"].did, identities["icmr"].did)
    assert contract.digest == contracts.payload_digest(contracts.canonical_json(payload))
    expired = {**payload, "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2021-01-01T00:00:00Z"}
    assert contracts.verify_signatures(contracts.sign_contract(expired, [identities["cowin"]]), resolve).signers

    with pytest.raises(contracts.UnsignedContract):
        contracts.verify_signatures(contracts.new_envelope(payload), resolve)
    outsider = dids.Identity.generate(dids.did_web("127.0.0.1", 8443, "outsider"))
    documents[outsider.did] = outsider.document()
    foreign = cbor2.loads(contracts.sign_contract({**payload, "tdc": {**payload["tdc"], "did": outsider.did}},
                                                  [outsider])).value[3][0]
    for base in (contracts.new_envelope(payload), partial):   # outsider alone, or beside good ones
        body = cbor2.loads(base)
        body.value[3].append(foreign)
        with pytest.raises(contracts.UnknownSigner, match="not a party"):
            contracts.verify_signatures(cbor2.dumps(body), resolve)
    impostor = dids.Identity(identities["cowin"].did, dids.Identity.generate(identities["cowin"].did).private_key)
    with pytest.raises(contracts.BadSignature, match=f"signature by {impostor.did}"):
        contracts.verify_signatures(contracts.add_signature(partial, impostor), resolve)


def test_a_contract_pinning_a_blake3_commitment_takes_that_package_and_no_other(payload, tmp_path):
    """Version-2 packages are pinned by `blake3`: the contract validates, and its pin matches the
    package it names and refuses another package, or the same data committed by SHA-256."""
    from shared import package
    key, data = bytes(range(32)), b"pseudonym,age\nab,3\n"
    (tmp_path / "t.csv").write_bytes(data)
    right = package.encrypt_file(tmp_path / "t.csv", tmp_path / "t.ccr", key, "icmr-1", "text/csv")
    (tmp_path / "t.csv").write_bytes(data + b"cd,4\n")
    other = package.encrypt_file(tmp_path / "t.csv", tmp_path / "o.ccr", key, "icmr-1", "text/csv")
    (tmp_path / "t.csv").write_bytes(data)
    old = package.encrypt_file(tmp_path / "t.csv", tmp_path / "v1.ccr", key, "icmr-1", "text/csv", version=1)
    dataset = payload["tdps"][0]["datasets"][0]
    del dataset["sha256"]
    dataset.update(right.pin())
    contracts.validate_payload(payload)
    [entry] = [d for _, d in contracts.datasets(payload) if d is dataset]
    assert package.read_header((tmp_path / "t.ccr").read_bytes()).manifest.matches(entry)
    assert not package.read_header((tmp_path / "o.ccr").read_bytes()).manifest.matches(entry)
    assert not package.read_header((tmp_path / "v1.ccr").read_bytes()).manifest.matches(entry)
    assert old.sha256 and other.blake3 != right.blake3
