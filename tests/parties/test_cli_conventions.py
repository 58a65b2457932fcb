"""`ccr` as people expect from `az` (issue 14), and the frictions a new user met, one test each:
a fast `--help` (no heavy import), `--output json|table|tsv` and `--query` anywhere, `--version`,
bash completion, an explicit local profile that says where its endpoints came from, an
unconfigured fetch that stops at once instead of retrying 127.0.0.1, a prepare config error that
points at `rename`, a missing-column error that also names the undeclared column, progress lines
when stderr is not a terminal, and `tdp check-bounds` catching bounds read off the data."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccr.bounds import check
from ccr.cli import main
from ccr.output import render
from shared import deid, settings

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("azure", "requests", "cryptography", "jwcrypto", "onnx", "torch", "numpy", "pandas", "tqdm", "shared.did",
         "shared.contract", "jmespath")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_imports_no_sdk_http_or_crypto_library():
    """What keeps `ccr --help` under half a second: the parser needs none of them."""
    probe = ("import sys, contextlib, io\nfrom ccr.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try: main(['--help'])\n    except SystemExit: pass\n"
             f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}])")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_output_formats_and_query_before_or_after_the_command(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CCR_EMULATOR_DIR", str(tmp_path))
    monkeypatch.setenv("CCR_LEDGER_URL", "https://ledger.example")
    code, out, _ = run(capsys, "profile", "-o", "tsv", "--query", "settings[?setting=='CCR_LEDGER_URL'].[value, source]")
    assert code == 0 and out == "https://ledger.example\tenvironment\n"
    code, out, _ = run(capsys, "--output", "table", "--query", "settings[:2].{Name: setting, From: source}", "profile")
    assert code == 0 and out.splitlines()[0].split() == ["Name", "From"] and out.splitlines()[1].startswith("----")
    code, out, err = run(capsys, "profile", "--query", "[")
    assert code == 1 and out == "" and err.startswith("ccr: error: --query:")


def test_render_shapes():
    runs = {"runs": [{"run_id": "run-1", "status": "failed", "phases": {}}, {"run_id": "run-2", "status": None}]}
    assert render(runs, "tsv") == "run-1\tfailed\nrun-2\t"       # a lone list is the rows; nested left out
    assert render(runs, "table").splitlines() == ["Run Id  Status", "------  ------", "run-1   failed", "run-2"]
    assert render({"a": True, "b": 2}, "tsv") == "true\t2" and render("x", "table") == "x"
    assert json.loads(render(runs, "json")) == runs


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("ccr ") and "Python 3" in out


def test_bash_completion_completes_groups_commands_and_options(capsys, tmp_path):
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    (tmp_path / "ccr.bash").write_text(script)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        shell = (f"source {tmp_path / 'ccr.bash'}; COMP_WORDS=(ccr {line}); COMP_CWORD={len(words)}; "
                 "_ccr_complete; echo ${COMPREPLY[@]}")
        return subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30).stdout.split()

    assert complete("ru") == ["runs"]
    assert complete("runs", "w") == ["watch"]
    assert "--wait" in complete("tdc", "fetch", "--run-id", "run-1", "--w")


def test_local_profile_says_which_settings_came_from_the_endpoints_file(capsys, monkeypatch, tmp_path):
    (tmp_path / "endpoints.json").write_text(json.dumps({"CCR_LEDGER_URL": "https://127.0.0.1:9"}))
    monkeypatch.delenv("CCR_LEDGER_URL", raising=False)
    monkeypatch.setenv("CCR_EMULATOR_DIR", str(tmp_path))
    (tmp_path / "e.cose").write_bytes(b"\x00")
    code, _, err = run(capsys, "contract", "submit", "--envelope", str(tmp_path / "e.cose"))
    assert code == 1
    assert f"CCR_LEDGER_URL from {tmp_path / 'endpoints.json'}: is the ledger running there?" in err
    assert f"ccr: local profile: CCR_LEDGER_URL from {tmp_path / 'endpoints.json'}" in err
    code, out, _ = run(capsys, "profile")
    described = json.loads(out)
    assert described["profile"] == "local" and described["why"] == "CCR_LOCAL_PROFILE is set"
    ledger = next(row for row in described["settings"] if row["setting"] == "CCR_LEDGER_URL")
    assert ledger["source"] == str(tmp_path / "endpoints.json")
    assert settings.read_from_endpoints_file == set()


def test_an_unconfigured_fetch_stops_at_once_instead_of_retrying_loopback(capsys, monkeypatch, tmp_path):
    """Local profile on, no endpoints file, no clean room: no silent Azurite default."""
    for name in ("CCR_FUNCTIONS_URL", "CCR_STORAGE_CONNECTION", "AzureWebJobsStorage", "CCR_PARTY_DID", "CCR_PARTY_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCR_EMULATOR_DIR", str(tmp_path / "nothing"))
    started = time.monotonic()
    code, _, err = run(capsys, "tdc", "fetch", "--run-id", "run-0123456789abcdef", "--out", str(tmp_path / "o.zip"))
    assert time.monotonic() - started < 5
    assert code == 1 and "no clean room configured: set CCR_FUNCTIONS_URL and your identity" in err


def _config(**fields) -> dict:
    return {"dataset": "d", "pseudonymize": {"id": {"as": "pseudonym", "normalize": "trim"}}, "drop": [],
            "keep": ["mean radius"], **fields}


def test_a_header_with_spaces_points_at_rename():
    with pytest.raises(deid.DeidError, match=r"'mean radius' is not a plain name .*\"rename\""):
        deid.parse_config(_config())
    assert deid.parse_config(_config(rename={"mean radius": "mean_radius"})).output_columns == ["pseudonym",
                                                                                                "mean_radius"]


def test_a_missing_column_error_also_names_the_undeclared_one(tmp_path):
    (tmp_path / "raw.csv").write_text("id,mean_radius\n1,2.5\n")
    config = deid.parse_config(_config(rename={"mean radius": "mean_radius"}))
    with pytest.raises(deid.DeidError, match=r"mean radius declared in the config are missing; the header has "
                                             r"undeclared column\(s\) mean_radius"):
        deid.prepare_csv(config, tmp_path / "raw.csv", tmp_path / "out.csv", b"k" * 32)


def test_prepare_and_publish_print_a_line_per_step_off_a_terminal(capsys, tmp_path, monkeypatch):
    (tmp_path / "raw.csv").write_text("id,mean radius\n1,2.5\n2,3.5\n")
    (tmp_path / "config.json").write_text(json.dumps(_config(rename={"mean radius": "mean_radius"})))
    monkeypatch.setenv("CCR_PSEUDONYM_KEY", "ab" * 32)
    code, out, err = run(capsys, "tdp", "prepare", "--config", str(tmp_path / "config.json"), "--input",
                         str(tmp_path / "raw.csv"), "--out", str(tmp_path / "prepared.csv"))
    assert code == 0 and json.loads(out)["rows"] == 2
    assert err.splitlines()[0].startswith("ccr: prepare ") and err.splitlines()[-1].startswith("ccr: prepared 2 rows")


def test_check_bounds_warns_when_a_bound_is_the_datas_own_extreme(tmp_path):
    (tmp_path / "t.csv").write_text("pseudonym,radius,age\n" + "".join(f"p{i},{6.98 + i / 10},{20 + i}\n"
                                                                       for i in range(50)))
    report = check(tmp_path / "t.csv", {"radius": (6.98, 11.88), "age": (0.0, 120.0), "other": (0.0, 1.0)})
    verdicts = {entry["column"]: entry["verdict"] for entry in report["columns"]}
    assert verdicts == {"radius": "looks derived from the data", "age": "ok"}
    assert report["not_in_table"] == ["other"]
    assert "radius: the low and high bound equals this table's observed range" in report["warnings"][0]
    flags = check(tmp_path / "t.csv", {"age": (20.0, 69.0)})            # 50 distinct values: not a code set
    assert flags["columns"][0]["verdict"] == "looks derived from the data"
    (tmp_path / "coded.csv").write_text("pseudonym,smoker\n" + "".join(f"p{i},{i % 2}\n" for i in range(30)))
    assert check(tmp_path / "coded.csv", {"smoker": (0.0, 1.0)})["columns"][0]["verdict"] == "ok"  # a flag's 0/1
    tight = check(tmp_path / "t.csv", {"age": (0.0, 40.0)})
    assert tight["columns"][0]["verdict"] == "clips values" and tight["columns"][0]["clipped_share"] == 0.58


def test_check_bounds_command_is_strict_on_request(capsys, tmp_path):
    (tmp_path / "t.csv").write_text("pseudonym,age\n" + "".join(f"p{i},{20 + i}\n" for i in range(51)))
    (tmp_path / "training.json").write_text(json.dumps({"feature_bounds": {"age": [20, 70]}}))
    code, out, err = run(capsys, "tdp", "check-bounds", "--input", str(tmp_path / "t.csv"), "--training",
                         str(tmp_path / "training.json"))
    assert code == 0 and json.loads(out)["columns"][0]["verdict"] == "looks derived from the data"
    assert "ccr: warning: age: the low and high bound" in err
    code, _, err = run(capsys, "tdp", "check-bounds", "--input", str(tmp_path / "t.csv"), "--training",
                       str(tmp_path / "training.json"), "--strict")
    assert code == 1 and "1 warning(s)" in err


def test_the_readme_says_the_first_install_takes_minutes_and_links_the_guide():
    readme = (ROOT / "README.md").read_text()
    assert "first run takes several minutes" in readme and "docs/GUIDE.md" in readme
