"""`python -m local_emulator demo [covid|loan] [--rows N]`: a wrong --rows is refused with a
usage error naming it, before any stack or scenario starts."""
from __future__ import annotations

import pytest

from local_emulator import __main__ as cli
from local_emulator import demo


@pytest.fixture
def started(monkeypatch):
    """Which demo would have run (none of them really starts here)."""
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda: calls.append("covid") or 0)
    monkeypatch.setattr(demo, "run_loan_demo", lambda rows: calls.append(("loan", rows)) or 0)
    return calls


@pytest.mark.parametrize("argv, message", [
    (["demo", "loan", "--rows", "0"], "argument --rows: expected a whole number of at least 1, not '0'"),
    (["demo", "loan", "--rows", "many"], "argument --rows: expected a whole number of at least 1, not 'many'"),
    (["demo", "covid", "--rows", "500"], "--rows applies to the loan scenario only"),
    (["demo", "--rows", "500"], "--rows applies to the loan scenario only"),
    (["demo", "mortgages"], "argument scenario: invalid choice: 'mortgages'"),
])
def test_a_bad_demo_command_is_refused_before_anything_starts(argv, message, started, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert started == []


@pytest.mark.parametrize("argv, expected", [
    (["demo"], "covid"),
    (["demo", "covid"], "covid"),
    (["demo", "loan"], ("loan", None)),   # run_loan_demo's default scale
    (["demo", "loan", "--rows", "200000"], ("loan", 200_000)),
])
def test_the_demo_command_picks_the_scenario_and_scale(argv, expected, started):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0 and started == [expected]
