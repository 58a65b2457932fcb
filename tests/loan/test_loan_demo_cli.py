"""`python -m local_emulator demo [covid|loan] [--rows N] [--batch-rows N] [--seed-scale]
[--image oci|tarball]`: a wrong flag is refused with a usage error naming it, before any stack
or scenario starts."""
from __future__ import annotations

import pytest

from local_emulator import __main__ as cli
from local_emulator import demo
from local_emulator.loan_scenario import SEED_SCALE_BATCH_ROWS, SEED_SCALE_ROWS


@pytest.fixture
def started(monkeypatch):
    """Which demo would have run (none of them really starts here)."""
    calls = []
    monkeypatch.delenv("CCR_TRAINER_IMAGE", raising=False)
    monkeypatch.setattr(demo, "run_demo", lambda image_kind: calls.append(("covid", image_kind)) or 0)
    monkeypatch.setattr(demo, "run_loan_demo", lambda rows, image_kind, batch_rows:
                        calls.append(("loan", rows, batch_rows, image_kind)) or 0)
    return calls


@pytest.mark.parametrize("argv, message", [
    (["demo", "loan", "--rows", "0"], "argument --rows: expected a whole number of at least 1, not '0'"),
    (["demo", "loan", "--rows", "many"], "argument --rows: expected a whole number of at least 1, not 'many'"),
    (["demo", "covid", "--rows", "500"], "--rows applies to the loan scenario only"),
    (["demo", "--rows", "500"], "--rows applies to the loan scenario only"),
    (["demo", "covid", "--batch-rows", "500"], "--batch-rows applies to the loan scenario only"),
    (["demo", "--seed-scale"], "--seed-scale applies to the loan scenario only"),
    (["demo", "loan", "--batch-rows", "-3"], "argument --batch-rows: expected a whole number of at least 1, not '-3'"),
    (["demo", "loan", "--seed-scale", "--rows", "10"], "--seed-scale sets the rows itself"),
    (["demo", "mortgages"], "argument scenario: invalid choice: 'mortgages'"),
    (["demo", "--image", "docker"], "argument --image: invalid choice: 'docker'"),
])
def test_a_bad_demo_command_is_refused_before_anything_starts(argv, message, started, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert started == []


@pytest.mark.parametrize("argv, expected", [
    (["demo"], ("covid", "oci")),          # the real trainer image unless told otherwise
    (["demo", "covid", "--image", "tarball"], ("covid", "tarball")),
    (["demo", "loan"], ("loan", None, None, "oci")),   # run_loan_demo's default scale
    (["demo", "loan", "--rows", "200000", "--image", "tarball"], ("loan", 200_000, None, "tarball")),
    (["demo", "loan", "--batch-rows", "700"], ("loan", None, 700, "oci")),
    (["demo", "loan", "--seed-scale"], ("loan", SEED_SCALE_ROWS, SEED_SCALE_BATCH_ROWS, "oci")),
])
def test_the_demo_command_picks_the_scenario_and_scale(argv, expected, started):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0 and started == [expected]
