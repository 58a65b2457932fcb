"""The noisy joined-row count: the Gaussian mechanism on the number of joined rows (L2
sensitivity 1: adding or removing a person adds or removes at most one joined row, since join
keys are unique per dataset). Every parameter of the run that would otherwise depend on the
private count n (the contract's minimum-row check, the validation-size check, DP-SGD's sample
rate and steps, the run's delta) is derived from this release instead, by post-processing."""
from __future__ import annotations

from trainer_container.accountant import Accountant, GaussianRelease
from trainer_container.secure_random import SecureRandom


def noisy_count(n: int, noise_multiplier: float, noise: SecureRandom, accountant: Accountant) -> float:
    """n + N(0, noise_multiplier^2), charged to the accountant first."""
    accountant.charge(GaussianRelease("joined_row_count", noise_multiplier))
    return float(n + noise.normal(1, noise_multiplier)[0])
