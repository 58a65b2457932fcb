"""checkov (`--framework bicep --skip-download`, in its own venv: tests/infra/checkov_venv.py)
passes infra/ with the project's three extra checks (infra/checkov_checks/), skips nothing
without an inline reason, and still catches each property the deployment relies on when a copy
of infra/ is weakened."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.infra.bicep import INFRA, bicep_files
from tests.infra.checkov_venv import checkov

# The checks the issue names, by id: storage (HTTPS only, TLS 1.2, private containers, no shared
# key, no public blob access), Key Vault (purge protection, soft delete, RBAC), Function App
# (HTTPS only, TLS), ACR (admin user off, no anonymous pull).
REQUIRED = {
    "CKV_AZURE_3", "CKV_AZURE_44", "CKV_AZURE_34", "CKV_CCR_1", "CKV_CCR_2",
    "CKV_AZURE_110", "CKV_AZURE_111", "CKV_AZURE_42", "CKV_CCR_3",
    "CKV_AZURE_70", "CKV_AZURE_14", "CKV_AZURE_15", "CKV_AZURE_145",
    "CKV_AZURE_137", "CKV_AZURE_138",
}


def run_checkov(directory: Path) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(checkov()), "--framework", "bicep", "--skip-download", "--directory", str(directory),
                           "--external-checks-dir", str(directory / "checkov_checks"), "--output", "json"],
                          capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(done.stdout)
    assert isinstance(report, dict) and report["check_type"] == "bicep", done.stderr[-2000:]
    return done.returncode, report


@pytest.fixture(scope="module")
def report() -> dict:
    code, report = run_checkov(INFRA)
    assert code == 0, json.dumps(report["results"]["failed_checks"], indent=1)[:4000]
    return report


def test_checkov_passes_every_bicep_file(report):
    summary = report["summary"]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0
    scanned = {Path(c["file_path"]).name for kind in ("passed_checks", "skipped_checks")
               for c in report["results"][kind]}
    resourceful = {p.name for p in bicep_files()} - {"main.bicep", "identities.bicep", "rbac.bicep",
                                                      "monitoring.bicep", "subscriptions.bicep"}
    assert resourceful <= scanned   # every file with checkable resources was read, none failed to parse


def test_the_required_checks_run_and_pass(report):
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    assert REQUIRED <= passed, sorted(REQUIRED - passed)


def test_no_check_is_skipped_without_an_inline_reason(report):
    skipped = report["results"]["skipped_checks"]
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert reason != "No comment provided" and len(reason) >= 40, check["check_id"]
        assert check["check_id"] not in REQUIRED
    comments = [line for path in bicep_files() for line in path.read_text().splitlines() if "checkov:skip=" in line]
    assert len(comments) == len(skipped)  # every skip comment is used, and no skip comes from elsewhere


WEAKENINGS = {
    "modules/storage.bicep": [("allowSharedKeyAccess: false", "allowSharedKeyAccess: true", "CKV_CCR_1"),
                              ("supportsHttpsTrafficOnly: true", "supportsHttpsTrafficOnly: false", "CKV_AZURE_3"),
                              ("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'", "CKV_AZURE_44"),
                              ("allowBlobPublicAccess: false", "allowBlobPublicAccess: true", "CKV_CCR_2")],
    "modules/keyvault.bicep": [("enableRbacAuthorization: true", "enableRbacAuthorization: false", "CKV_CCR_3"),
                               ("enablePurgeProtection: true", "enablePurgeProtection: false", "CKV_AZURE_110")],
    "modules/functionapp.bicep": [("httpsOnly: true", "httpsOnly: false", "CKV_AZURE_70")],
    "modules/registry.bicep": [("adminUserEnabled: false", "adminUserEnabled: true", "CKV_AZURE_137")],
}


def test_checkov_fails_a_weakened_copy_on_each_property(tmp_path):
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for relative, changes in WEAKENINGS.items():
        path = copy / relative
        text = path.read_text()
        for before, after, _ in changes:   # the property line itself, not a comment naming it
            text, count = re.subn(rf"(?m)^(\s*){re.escape(before)}$", lambda m: m.group(1) + after, text)
            assert count == 1, before
        path.write_text(text)
    code, report = run_checkov(copy)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert code != 0
    assert {check for changes in WEAKENINGS.values() for _, _, check in changes} <= failed
