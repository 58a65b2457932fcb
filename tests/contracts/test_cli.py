"""`ccr identity` and `ccr contract` against the ledger twin: four parties create identities,
write, sign, verify and submit a contract; the ledger then calls the webhook."""
from __future__ import annotations

import json
import stat

import pytest

from ccr import cli
from local_emulator.delivery import RetryPolicy
from local_emulator.ledger import LedgerTwin
from shared import contract as contracts
from shared import did as did_tools
from shared.container_group import policy_template_sha256
from shared.run_records import run_id_for
from tests.conftest import wait_until as wait_for
from tests.contracts.conftest import sha

PARTIES = ("tdc", "icmr", "cowin", "index")


@pytest.fixture
def ccr(capsys):
    """Run `ccr ...` in-process; returns (exit status, parsed stdout or None, stderr)."""
    def run(*argv):
        status = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, (json.loads(out) if status == 0 and out.strip() else None), err
    return run


@pytest.fixture
def ledger(tmp_path, tls, webhook_factory, monkeypatch):
    hook = webhook_factory([200])
    twin = LedgerTwin(tmp_path / "ledger", hook.url, "k", tls.server_context(),
                      retry=RetryPolicy(initial_seconds=0.02, maximum_seconds=0.1, attempts=3)).start()
    monkeypatch.setenv("CCR_CA_BUNDLE", str(tls.ca_path))
    monkeypatch.setenv("CCR_LEDGER_URL", twin.url)
    twin.hook = hook
    yield twin
    twin.stop()


def new_contract(ccr, tmp_path, dids: dict, epsilon=1.5, flags=(), **overrides):
    options = {"--contract-id": "covid-cli", "--purpose": "covid model", "--valid-from": "2026-01-01T00:00:00Z",
               "--valid-until": "2099-01-01T00:00:00Z", "--tdc": dids["tdc"],
               "--model": f"blob=models/model/m-1.ccr,sha256={sha('m')},key_id=m-1",
               "--tdc-output": "key_id=out-1,webhook=http://127.0.0.1:9/notify", "--key-vault": f"{dids['tdc']}=https://kv.tdc",
               "--delta": "1e-5", "--deadline-seconds": "600", "--trainer-image": "ccr-trainer@sha256:" + sha("i"),
               "--join": tmp_path / "join.json", "--out": tmp_path / "payload.json", **overrides}
    (tmp_path / "join.json").write_text(json.dumps({"datasets": []}))
    argv = ["contract", "new", *flags]
    for option, value in options.items():
        argv += [option, value]
    for name in PARTIES[1:]:
        argv += ["--dataset", f"did={dids[name]},name={name},blob=datasets/{name}/{name}-1.ccr,sha256={sha(name)},"
                              f"key_id={name}-1,epsilon={epsilon}", "--key-vault", f"{dids[name]}=https://kv.{name}"]
    return ccr(*argv)


def identities_with_budgets(ccr, tmp_path, names=PARTIES) -> dict:
    """`ccr identity new` for each party, then each provider declares its dataset's budget."""
    dids = {name: ccr("identity", "new", "--name", name, "--dir", tmp_path / "keys")[1]["did"] for name in names}
    for name in PARTIES[1:]:
        status, _, err = declare(ccr, tmp_path, dids, name, 1.5)
        assert status == 0, err
    return dids


def declare(ccr, tmp_path, dids, name, epsilon, delta=1e-5):
    return ccr("tdp", "declare-budget", "--dataset", name, "--epsilon", epsilon, "--delta", delta,
               "--did", dids[name], "--key", tmp_path / "keys" / f"{name}.key.pem")


def test_four_parties_sign_verify_and_submit(ccr, ledger, tmp_path):
    dids = {}
    for name in PARTIES:
        status, out, err = ccr("identity", "new", "--name", name, "--dir", tmp_path / "keys")
        assert status == 0, err
        assert out["did"] == ledger.did_for(name)
        assert stat.S_IMODE((tmp_path / "keys" / f"{name}.key.pem").stat().st_mode) == 0o600
        dids[name] = out["did"]
        # registered with a proof of possession by the new key, for this ledger
        document = json.loads((ledger.data_dir / "dids" / f"{name}.json").read_text())
        proof = (ledger.data_dir / "dids" / f"{name}.proof.jws").read_text()
        assert did_tools.check_registration_proof(document, proof, ledger.url)["did"] == out["did"]
    status, out, err = new_contract(ccr, tmp_path, dids)
    assert status == 1 and f"{dids['icmr']} has declared no lifetime budget for dataset icmr" in err
    for name in PARTIES[1:]:
        status, out, err = declare(ccr, tmp_path, dids, name, 1.5)
        assert status == 0 and out["recorded"] == "new" and out["epsilon"] == 1.5, err
    assert declare(ccr, tmp_path, dids, "icmr", 1.5)[1]["recorded"] == "already recorded"
    status, _, err = declare(ccr, tmp_path, dids, "icmr", 15)   # raising it later: refused
    assert status == 1 and "HTTP 409" in err and "declared once" in err
    status, out, err = new_contract(ccr, tmp_path, dids)
    assert status == 0, err
    payload = json.loads((tmp_path / "payload.json").read_text())
    assert payload["schema_version"] == 2
    assert payload["tdps"][0]["datasets"][0] == {
        "name": "icmr", "version": 1, "blob": "datasets/icmr/icmr-1.ccr", "sha256": sha("icmr"), "key_id": "icmr-1",
        "epsilon": 1.5, "budget": ledger.recorded_budget(dids["icmr"], "icmr")}
    assert [p["key_vault"] for p in payload["tdps"]] == ["https://kv.icmr", "https://kv.cowin", "https://kv.index"]
    assert payload["evaluation"] == {"validation_split": 0.2, "min_joined_rows": 100}
    assert payload["workloads"]["training"]["policy_template_sha256"] == policy_template_sha256("ccr-trainer@sha256:" + sha("i"))
    assert out["parties"] == [dids[n] for n in PARTIES]

    envelope = None
    for i, name in enumerate(PARTIES):
        argv = ["contract", "sign", "--contract", tmp_path / "payload.json", "--did", dids[name],
                "--key", tmp_path / "keys" / f"{name}.key.pem", "--out", tmp_path / f"signed{i}.cose", "--no-grant"]
        status, out, err = ccr(*argv, *(["--envelope", envelope] if envelope else []))
        assert status == 0, err
        envelope = tmp_path / f"signed{i}.cose"
        assert out["missing"] == [dids[n] for n in PARTIES[i + 1:]]

    status, out, err = ccr("contract", "verify", "--envelope", envelope)
    assert status == 0, err
    assert out["verified"] and out["contract_id"] == "covid-cli" and len(out["signers"]) == 4
    status, out, err = ccr("contract", "verify", "--envelope", tmp_path / "signed2.cose")
    assert status == 1 and "MissingSigner" in err and dids["index"] in err

    status, out, err = ccr("contract", "submit", "--envelope", envelope)
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    assert status == 0 and out == {"seqno": 1, "contract_id": "covid-cli", "complete": True, "missing": [],
                                   "digest": digest, "run_id": run_id_for("covid-cli", digest)}
    wait_for(lambda: ledger.entry(1)["delivery"] == "delivered")
    assert ledger.hook.calls[0]["body"] == envelope.read_bytes()


def test_a_contract_allows_continued_training_only_when_its_author_asks(ccr, ledger, tmp_path):
    dids = identities_with_budgets(ccr, tmp_path)
    assert new_contract(ccr, tmp_path, dids)[0] == 0
    training = json.loads((tmp_path / "payload.json").read_text())["workloads"]["training"]
    assert "continued_training" not in training and not contracts.continued_training({"workloads": {"training": training}})
    status, _, err = new_contract(ccr, tmp_path, dids, flags=("--continued-training",))
    assert status == 0, err
    assert contracts.continued_training(json.loads((tmp_path / "payload.json").read_text())) is True


def test_contract_new_writes_the_inference_workload_only_when_a_requester_is_named(ccr, ledger, tmp_path):
    image = "ccr-trainer@sha256:" + sha("i")
    dids = identities_with_budgets(ccr, tmp_path)
    assert new_contract(ccr, tmp_path, dids)[0] == 0
    assert contracts.inference(json.loads((tmp_path / "payload.json").read_text())) is None
    status, _, err = new_contract(ccr, tmp_path, dids, flags=("--inference-requester", dids["icmr"],
                                                              "--inference-requester", dids["tdc"],
                                                              "--withhold-weights", "--inference-max-rows", "5000"))
    assert status == 0, err
    terms = contracts.inference(json.loads((tmp_path / "payload.json").read_text()))
    assert terms["requesters"] == [dids["icmr"], dids["tdc"]] and terms["weights_leave"] is False
    assert terms["max_rows"] == 5000 and terms["image"] == image
    assert terms["policy_template_sha256"] == policy_template_sha256(image, workload="inference")
    assert terms["policy_template_sha256"] != policy_template_sha256(image)   # its own command, its own template
    (tmp_path / "payload.json").unlink()
    for flags, message in (
            (("--withhold-weights",), "--withhold-weights: name who may ask with --inference-requester first"),
            (("--inference-requester", "did:web:outsider.example"), "requesters[0] must be the DID of a party"),
            (("--inference-requester", dids["icmr"], "--inference-max-rows", "0"), "max_rows must be"),
    ):
        status, _, err = new_contract(ccr, tmp_path, dids, flags=flags)
        assert status == 1 and message in err, err
        assert not (tmp_path / "payload.json").exists()


def test_contract_new_pins_the_sidecar_the_deployment_runs(ccr, ledger, tmp_path, monkeypatch):
    """The contract names the SKR sidecar and its template digest covers it; a tag is refused."""
    from shared.skr_sidecar import DEFAULT_SIDECAR, SidecarSpec
    image = "ccr-trainer@sha256:" + sha("i")
    other = "registry.example/aci/skr@sha256:" + sha("other sidecar")
    dids = identities_with_budgets(ccr, tmp_path)
    assert new_contract(ccr, tmp_path, dids)[0] == 0
    training = json.loads((tmp_path / "payload.json").read_text())["workloads"]["training"]
    assert training["skr_sidecar_image"] == DEFAULT_SIDECAR.image
    monkeypatch.setenv("CCR_SKR_SIDECAR_IMAGE", other)          # the operator's setting
    assert new_contract(ccr, tmp_path, dids)[0] == 0
    training = json.loads((tmp_path / "payload.json").read_text())["workloads"]["training"]
    assert training["skr_sidecar_image"] == other
    assert training["policy_template_sha256"] == policy_template_sha256(image, SidecarSpec(other))
    assert training["policy_template_sha256"] != policy_template_sha256(image)
    (tmp_path / "payload.json").unlink()
    monkeypatch.setenv("CCR_SKR_SIDECAR_IMAGE", "mcr.microsoft.com/aci/skr:2.14")
    status, _, err = new_contract(ccr, tmp_path, dids)
    assert status == 1 and "CCR_SKR_SIDECAR_IMAGE must pin the SKR sidecar by digest" in err
    status, _, err = new_contract(ccr, tmp_path, dids, **{"--skr-sidecar-image": "mcr.microsoft.com/aci/skr:latest"})
    assert status == 1 and "--skr-sidecar-image must pin the SKR sidecar by digest" in err
    assert not (tmp_path / "payload.json").exists()


def test_identity_refusals_keep_keys_safe(ccr, ledger, tmp_path):
    keys = tmp_path / "keys"
    assert ccr("identity", "new", "--name", "icmr", "--dir", keys)[0] == 0
    first = (keys / "icmr.key.pem").read_bytes()
    status, _, err = ccr("identity", "new", "--name", "icmr", "--dir", keys)
    assert status == 1 and "not overwriting" in err
    assert (keys / "icmr.key.pem").read_bytes() == first
    status, _, err = ccr("identity", "new", "--name", "icmr", "--dir", tmp_path / "other")
    assert status == 1 and "already registered" in err
    assert not (tmp_path / "other" / "icmr.key.pem").exists()
    status, _, err = ccr("identity", "new", "--name", "x", "--ledger", "http://127.0.0.1:1", "--dir", keys)
    assert status == 1 and "https" in err


def test_bad_contract_arguments_write_nothing(ccr, ledger, tmp_path):
    dids = identities_with_budgets(ccr, tmp_path)
    for epsilon, delta, reason in ((0, 1e-5, "epsilon must be a number in (0, inf)"),
                                   (1.5, 1, "delta must be a number in (0, 1)")):
        status, _, err = ccr("tdp", "declare-budget", "--dataset", "icmr-2", "--epsilon", epsilon, "--delta", delta,
                             "--did", dids["icmr"], "--key", tmp_path / "keys" / "icmr.key.pem")
        assert status == 1 and reason in err
        assert ledger.recorded_budget(dids["icmr"], "icmr-2") is None  # nothing was sent
    status, _, err = new_contract(ccr, tmp_path, dids, epsilon=2.0)
    assert status == 1 and "must not exceed the provider's declared lifetime epsilon (1.5)" in err
    status, _, err = new_contract(ccr, tmp_path, dids, epsilon="1.5,threshold=9")
    assert status == 1 and "no longer a contract term" in err
    status, _, err = new_contract(ccr, tmp_path, dids, epsilon=0)
    assert status == 1 and "epsilon must be > 0" in err
    assert not (tmp_path / "payload.json").exists()
    status, _, err = new_contract(ccr, tmp_path, dids, **{"--model": "sha256=abc"})
    assert status == 1 and "missing blob, key_id" in err
    status, _, err = new_contract(ccr, tmp_path, dids, **{"--model": f"blob=models/m.ccr,sha256={sha('m')},"
                                                                     "key_id=https://kv/keys/model/1"})
    assert status == 1 and "not a Key Vault URL" in err and not (tmp_path / "payload.json").exists()


def test_wrong_key_or_outsider_signature(ccr, ledger, tmp_path):
    dids = identities_with_budgets(ccr, tmp_path, PARTIES + ("outsider",))
    assert new_contract(ccr, tmp_path, dids)[0] == 0
    contract = tmp_path / "payload.json"
    status, _, err = ccr("contract", "sign", "--contract", contract, "--did", dids["outsider"],
                         "--key", tmp_path / "keys" / "outsider.key.pem", "--out", tmp_path / "x.cose", "--no-grant")
    assert status == 1 and "not a party" in err and not (tmp_path / "x.cose").exists()
    envelope = None
    for i, name in enumerate(PARTIES):   # icmr signs with cowin's key
        key = "cowin" if name == "icmr" else name
        argv = ["contract", "sign", "--contract", contract, "--did", dids[name],
                "--key", tmp_path / "keys" / f"{key}.key.pem", "--out", tmp_path / f"s{i}.cose", "--no-grant"]
        assert ccr(*argv, *(["--envelope", envelope] if envelope else []))[0] == 0
        envelope = tmp_path / f"s{i}.cose"
    status, _, err = ccr("contract", "verify", "--envelope", envelope)
    assert status == 1 and "BadSignature" in err and dids["icmr"] in err
    with pytest.raises(contracts.BadSignature):
        contracts.verify_contract(envelope.read_bytes())
