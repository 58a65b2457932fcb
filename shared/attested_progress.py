"""Attested training progress: the run page shows "epoch i of N, epsilon spent so far" only when
the attested trainer of that very run said so.

Claim: a run record's `progress` (`{"epoch", "epochs", "epsilon_spent", "at"}`) was signed by
the ephemeral key that the trainer of this run bound, with the run id and the run's nonce, into
an attestation token for this run's host data: the same proof as the outcome
(shared/attested_outcome.py `attested_statement`), one token per run, one signed statement per
epoch. The figures are public or charged: the epoch counter and the plan's epoch count are
config constants, and the epsilon is the accountant's over the plan's parameters (noise
multiplier, sample rate from the noisy row count, steps done, the run's delta) and the
mechanisms already charged, never a value computed from the data.

Attacks stopped: a forged or replayed progress event from anyone holding the topic key (no
token for this group, another run's nonce), a progress statement passed off as an outcome (no
status) or an outcome as progress (no `statement: progress`), figures outside the plan
(epsilon above the reserved budget, epoch beyond the epochs), and a stale event rolling the
page back (only a higher epoch is recorded).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from shared.attested_outcome import EPSILON_SLACK, OutcomeRejected, attested_statement

if TYPE_CHECKING:  # the trainer imports this module too, and never a run record
    from shared.run_records import RunRecords

STATEMENT = "progress"
MAX_EPOCHS = 100_000
log = logging.getLogger(__name__)


def statement(run_id: str, nonce: str, epoch: int, epochs: int, epsilon_spent: float) -> dict:
    """What the trainer signs after epoch `epoch` of `epochs`."""
    return {"statement": STATEMENT, "run_id": run_id, "nonce": nonce, "epoch": epoch, "epochs": epochs,
            "epsilon_spent": round(float(epsilon_spent), 6)}


def verify(event: dict, run_id: str, nonce: str, hostdata: str, authority: str, epsilon_planned: float,
           verify_tls: str | bool = True) -> dict:
    """`{"epoch", "epochs", "epsilon_spent"}` the attested trainer of this run signed, or OutcomeRejected."""
    signed = attested_statement(event, STATEMENT, run_id, nonce, hostdata, authority, verify_tls)
    if signed.get("statement") != STATEMENT:
        raise OutcomeRejected("the signed statement is not a progress statement")
    epoch, epochs, epsilon = signed.get("epoch"), signed.get("epochs"), signed.get("epsilon_spent")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (epoch, epochs)) \
            or not 1 <= epoch <= epochs <= MAX_EPOCHS:
        raise OutcomeRejected("the signed progress has no valid epoch of its epochs")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) \
            or epsilon < 0 or epsilon > epsilon_planned + EPSILON_SLACK:
        raise OutcomeRejected(f"the signed progress's epsilon is not within [0, {epsilon_planned}] (the plan)")
    return {"epoch": epoch, "epochs": epochs, "epsilon_spent": float(epsilon)}


def record(records: RunRecords, event: dict, nonce: str | None, hostdata: str, authority: str,
           epsilon_planned: float, verify_tls: str | bool = True) -> bool:
    """Verify `event` for its run and record its progress if newer; False (and a log line naming
    only why) when it does not prove itself. `nonce` None: the run has no trainer deployed."""
    run_id = event.get("run_id") if isinstance(event, dict) else None
    if not isinstance(run_id, str) or nonce is None:
        log.warning("progress event for a run without a deployed trainer; ignored")
        return False
    try:
        progress = verify(event, run_id, nonce, hostdata, authority, epsilon_planned, verify_tls)
    except OutcomeRejected as rejected:
        log.warning("run %s: progress event ignored: %s", run_id, rejected)
        return False
    return records.record_progress(run_id, progress)
