"""docs/GUIDE.md cannot drift: its `sh` blocks run in order, as written, in one bash session
against a fresh local stack, and must end with a decrypted model from a run that succeeded.

Substitutions (the guide's first block names them): REPO (this checkout), WORK (a temporary
folder) and CCR_EMULATOR_DIR (this stack's state folder, where `python -m local_emulator up`
would use .emulator/). PATH starts with this interpreter's folder, as `. .venv/bin/activate`
would. Nothing else of the test's environment reaches the commands."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from local_emulator.stack import Stack
from shared.run_records import RunRecords
from shared.settings import PROJECT_ROOT

GUIDE = PROJECT_ROOT / "docs" / "GUIDE.md"
DATA = PROJECT_ROOT / "docs" / "guide-data"
KEPT = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "NODE_PATH")


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.M | re.S)


def test_the_guide_data_is_what_its_generator_makes(tmp_path):
    subprocess.run([sys.executable, str(DATA / "make_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    for name in ("clinic_visits.csv", "lab_results.csv"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("guide-stack"), fast_retries=True) as running:
        yield running


def test_the_guide_runs_as_written(stack, tmp_path):
    blocks = sh_blocks(GUIDE.read_text())
    assert len(blocks) > 10
    script = tmp_path / "guide.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(blocks))
    work = tmp_path / "work"
    environment = {name: os.environ[name] for name in KEPT if name in os.environ}
    environment.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                       REPO=str(PROJECT_ROOT), WORK=str(work), CCR_EMULATOR_DIR=str(stack.state_dir),
                       PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(["bash", str(script)], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"

    run_ids = re.findall(r"^(run-[0-9a-f]{16})$", done.stdout, flags=re.M)
    assert len(set(run_ids)) == 1
    record = RunRecords(BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])).get(
        run_ids[0])
    assert record["status"] == "succeeded" and record["phase"] == "finished"
    assert (work / "trained" / "model.onnx").stat().st_size > 0
    privacy = json.loads((work / "trained" / "privacy.json").read_text())
    assert 0 < privacy["epsilon"] <= 3.0
    assert "5-year cardiac event probability: 0." in done.stdout
    assert "looks derived from the data" in done.stdout and "ccr: warning: age_years" in done.stderr
    for secret in (stack.settings["CCR_ACCESS_TOKEN"], stack.settings["CCR_PARTY_AUTH_SECRET"], "sig="):
        assert secret not in done.stdout + done.stderr
