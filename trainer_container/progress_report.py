"""The trainer's progress while it trains: after each epoch, one `CCR.Trainer.Progress` event
with epoch i of N and the epsilon spent so far, signed by an ephemeral key that one attestation
token of this run binds (shared/attested_progress.py says what the control plane checks).

The release rule holds: the epoch counter and N are config constants, and the epsilon is the
one accountant's composition of the mechanisms already charged before training (the noisy
count, the DP scaling statistics) with DP-SGD over the steps done so far, at the run's delta,
all from the plan's parameters (noise multiplier, sample rate from the noisy row count): no
value computed from the data during training (no loss, no accuracy) leaves.

Progress is best effort: without a token, or when Event Grid refuses, training goes on and
the outcome is reported as before; a constant line says so once.
"""
from __future__ import annotations

from typing import Callable

from jwcrypto import jwk

from shared import attested_outcome, attested_progress, events
from trainer_container.accountant import GaussianRelease, pld_epsilon
from trainer_container.dp_sgd import PrivacyPlan
from trainer_container.skr_client import KeyReleaseError, SkrClient


class ProgressReport:
    """Attests once (`start`), then signs and publishes one event per epoch (`epoch_done`)."""

    def __init__(self, run_id: str, nonce: str, skr: SkrClient, progress: Callable[[str], None] = print,
                 publish: Callable[[str, str, dict], None] = events.publish):
        self.run_id, self.nonce, self.skr, self.progress, self._publish = run_id, nonce, skr, progress, publish
        self._key: jwk.JWK | None = None
        self._token: str | None = None
        self._charged: tuple[GaussianRelease, ...] = ()
        self._plan: PrivacyPlan | None = None
        self._delta = 0.0

    def start(self, plan: PrivacyPlan, charged_before: list[GaussianRelease], delta: float) -> None:
        """One token for the whole training: binds a fresh key, the run id and the nonce."""
        self._plan, self._charged, self._delta = plan, tuple(charged_before), delta
        key = jwk.JWK.generate(kty="EC", crv="P-256")
        try:
            self._token = self.skr.attest(attested_outcome.runtime_data(
                key.export_public(as_dict=True), self.run_id, self.nonce))
            self._key = key
        except KeyReleaseError:
            self.progress("progress not attested: no progress events")

    def epsilon_after(self, epoch: int) -> float:
        """Epsilon at the run's delta of what is charged before training plus DP-SGD's first
        `epoch` epochs: the plan's parameters only."""
        plan = self._plan
        done = GaussianRelease("dp_sgd", plan.noise_multiplier, plan.sample_rate, plan.steps_per_epoch * epoch)
        return pld_epsilon([*self._charged, done], self._delta)

    def epoch_done(self, epoch: int) -> None:
        if self._key is None or self._plan is None:
            return
        statement = attested_progress.statement(self.run_id, self.nonce, epoch, self._plan.epochs,
                                                self.epsilon_after(epoch))
        data = {"run_id": self.run_id, "attestation": self._token,
                "progress": attested_outcome.sign(statement, self._key)}
        try:
            self._publish(events.TRAINER_PROGRESS, f"runs/{self.run_id}", data)
        except Exception as exc:  # progress is best effort; the outcome still goes out
            self.progress(f"progress event not published ({type(exc).__name__})")
