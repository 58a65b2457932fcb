"""The run's one privacy accountant. Every DP mechanism of the trainer hands it the same small
description (`GaussianRelease`: a Gaussian mechanism with a noise multiplier = noise standard
deviation / L2 sensitivity, run `steps` times on a Poisson sample of rate `sample_rate`), and
the accountant composes them all under add/remove-one-row adjacency (one person is at most one
joined row: join keys are unique per dataset).

The epsilon charged is the privacy loss distribution's (PLD, Google's `dp-accounting`,
pessimistic discretization: an upper bound), the tightest of the accountants we have; the RDP
epsilon (Opacus's RDP accountant over orders up to 4096) is reported beside it. A plain
Gaussian mechanism is the case sample_rate = 1.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from opacus.accountants import RDPAccountant

PLD_DISCRETIZATION = 1e-3  # dp-accounting's interval for the privacy loss values (pessimistic rounding)
ACCOUNTANT = f"pld (dp-accounting {version('dp-accounting')}, add/remove adjacency, " \
             f"discretization {PLD_DISCRETIZATION:g}, pessimistic)"
RDP_ACCOUNTANT = f"rdp (opacus {version('opacus')}, orders up to 4096)"


@dataclass(frozen=True)
class GaussianRelease:
    """What one mechanism costs: the interface every mechanism module offers the accountant."""
    mechanism: str
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1

    def event(self) -> dp_event.DpEvent:
        gaussian = dp_event.GaussianDpEvent(self.noise_multiplier)
        single = gaussian if self.sample_rate >= 1.0 else dp_event.PoissonSampledDpEvent(self.sample_rate, gaussian)
        return single if self.steps == 1 else dp_event.SelfComposedDpEvent(single, self.steps)


class _Rdp(RDPAccountant):
    """Opacus's RDP accountant over more orders: strong noise has its best order above 63."""
    DEFAULT_ALPHAS = RDPAccountant.DEFAULT_ALPHAS + list(range(64, 256, 8)) + [256, 384, 512, 768, 1024, 2048, 4096]

    def get_privacy_spent(self, *, delta: float, alphas=None):
        with warnings.catch_warnings():  # an optimum at the largest order is a looser bound, still sound
            warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
            return super().get_privacy_spent(delta=delta, alphas=alphas)


def pld_epsilon(releases: list[GaussianRelease] | tuple[GaussianRelease, ...], delta: float) -> float:
    """Epsilon at `delta` of all `releases` composed (PLD)."""
    if not releases:
        return 0.0
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(dp_event.ComposedDpEvent([r.event() for r in releases]))
    return float(accountant.get_epsilon(delta))


def rdp_epsilon(releases: list[GaussianRelease] | tuple[GaussianRelease, ...], delta: float) -> float:
    """Epsilon at `delta` of all `releases` composed (RDP, reported beside the PLD figure)."""
    accountant = _Rdp()
    accountant.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in releases]
    return float(accountant.get_epsilon(delta=delta)) if releases else 0.0


class Accountant:
    """The run's ledger of mechanisms: each one is charged before its output exists; the
    epsilon is computed at the run's delta, known once the noisy row count is."""

    def __init__(self):
        self.releases: list[GaussianRelease] = []

    def charge(self, release: GaussianRelease) -> GaussianRelease:
        self.releases.append(release)
        return release

    def epsilon(self, delta: float) -> float:
        return pld_epsilon(self.releases, delta)

    def report(self, delta: float) -> dict:
        """The figures privacy.json carries: the total (PLD), RDP beside it, each mechanism
        with what it alone would cost at the run's delta."""
        return {"epsilon": self.epsilon(delta), "delta": delta, "accountant": ACCOUNTANT,
                "epsilon_rdp": rdp_epsilon(self.releases, delta), "rdp_accountant": RDP_ACCOUNTANT,
                "adjacency": "add or remove one person (at most one joined row)",
                "mechanisms": [{**asdict(r), "epsilon_alone": pld_epsilon([r], delta)} for r in self.releases]}
