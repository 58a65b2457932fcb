"""`ccr tdp declare-version` against the ledger twin: a provider declares a published package
as a new version of its budgeted dataset; the ledger's refusals reach the user as clear errors,
and bad arguments send nothing."""
from __future__ import annotations

import json

import pytest

from ccr import cli
from local_emulator.ledger import LedgerTwin
from shared import version_declaration as versions
from tests.contracts.conftest import sha


@pytest.fixture(scope="module")
def ledger(tmp_path_factory, tls):
    twin = LedgerTwin(tmp_path_factory.mktemp("ledger"), ssl_context=tls.server_context()).start()
    yield twin
    twin.stop()


@pytest.fixture
def ccr(capsys, ledger, tls, monkeypatch):
    monkeypatch.setenv("CCR_CA_BUNDLE", str(tls.ca_path))
    monkeypatch.setenv("CCR_LEDGER_URL", ledger.url)

    def run(*argv):
        status = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, (json.loads(out) if status == 0 and out.strip() else None), err
    return run


def test_declare_version_records_it_and_reports_refusals(ccr, ledger, tmp_path):
    bank = ccr("identity", "new", "--name", "bank-cli", "--dir", tmp_path)[1]["did"]
    signer = ("--did", bank, "--key", tmp_path / "bank-cli.key.pem")

    def declare(*argv):
        return ccr("tdp", "declare-version", "--dataset", "loans", *argv, *signer)

    status, _, err = declare("--version", 2, "--blake3", sha("loans-2"))
    assert status == 1 and "no declared lifetime budget" in err and "declare-budget" in err
    assert ccr("tdp", "declare-budget", "--dataset", "loans", "--epsilon", 3, "--delta", 1e-5, *signer)[0] == 0
    status, out, err = declare("--version", 2, "--blake3", sha("loans-2"))
    assert status == 0, err
    assert out["version"] == 2 and out["digest"] == sha("loans-2") and out["new_individuals"] is False
    status, out, err = declare("--version", 3, "--sha256", sha("loans-3"), "--new-individuals")
    assert status == 0 and out["digest_algorithm"] == "sha256" and out["new_individuals"] is True, err
    status, _, err = declare("--version", 3, "--blake3", sha("loans-3b"))
    assert status == 1 and "HTTP 409" in err and "versions strictly increase" in err
    status, _, err = declare("--version", 4, "--blake3", sha("loans-2"), "--new-individuals")
    assert status == 1 and "already declared as version 2 of loans" in err
    status, _, err = declare("--version", 4, "--blake3", "abc")
    assert status == 1 and "digest must be 64 lowercase hex digits" in err
    assert [versions.claims(t)["version"] for t in ledger.versions.recorded(bank, "loans")] == [2, 3]
