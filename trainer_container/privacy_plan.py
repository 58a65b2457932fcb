"""The run's privacy plan: which mechanisms run, with which noise, so that all of them composed
in the one accountant (accountant.py, PLD) spend at most the TDC's target epsilon.

Mechanisms, in the order they run (each is a Gaussian mechanism; noise multiplier = noise
standard deviation / L2 sensitivity under add/remove-one-person adjacency):
1. `joined_row_count` (noisy_count.py): sensitivity 1;
2. `scaling_statistics` (features.py): per-feature sums of the bound-normalized training values,
   of their squares, and the training-row count, sensitivity sqrt(2d + 1);
3. `dp_sgd` (dp_sgd.py): subsampled Gaussian, `steps` times at rate `sample_rate`;
4. `confusion_counts` (dp_evaluation.py): the validation confusion matrix, sensitivity 1;
5. `score_histogram` (only if the config asks for roc_auc, binary models): per-class score
   histograms, sensitivity 1;
6. `validation_loss` (only if the config asks for loss): the sum of per-row losses clipped to
   [0, LOSS_BOUND], sensitivity LOSS_BOUND.

The mechanisms other than DP-SGD ("fixed") have reference noise multipliers below, all scaled
by one factor k so that their composition spends FIXED_SHARE of the target (composed Gaussians
are one Gaussian, so k is solved exactly); DP-SGD's noise multiplier is then searched (as
Opacus's get_noise_multiplier: double, then bisect) so that everything composed lies within
EPSILON_TOLERANCE below the target. k is chosen before any data is read at the contract's delta
(a hopeless budget is refused there); after the noisy count fixes the run's delta, k is chosen
again for the mechanisms still to come (it can only grow).

n is private: nothing here sees it. DP-SGD's sample rate and steps, the expected batch size,
the run's delta (the contract's, capped at 1 / the estimated training rows) and the minimum-row
checks all come from the noisy count and the contract's constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scipy.special import log_ndtr, ndtr

from trainer_container.accountant import Accountant, GaussianRelease, pld_epsilon
from trainer_container.dp_sgd import PrivacyBudgetError, PrivacyPlan
from trainer_container.join import JoinError

# Reference noise multipliers (at k = 1). At the COVID settings (target 1.5, delta 1e-5, 2119
# joined rows, split 0.2, batch 64, 5 epochs) k is about 1 and DP-SGD's multiplier about 1.9.
COUNT_NOISE_MULTIPLIER = 20.0  # rows: enough for a sample rate, far below any useful table size
STATISTICS_NOISE_MULTIPLIER = 12.0
CONFUSION_NOISE_MULTIPLIER = 2.9  # on 424 validation rows: accuracy within about 0.009 (one sd)
HISTOGRAM_NOISE_MULTIPLIER = 10.0
LOSS_NOISE_MULTIPLIER = 10.0
HISTOGRAM_BINS = 20
LOSS_BOUND = 4.0  # per-row validation loss clipped to [0, 4] (a BCE of 4: the logit is off by about 4)
FIXED_SHARE = 0.85
MAX_SCALE = 1024.0  # beyond this the metrics are noise: refuse rather than release them
EPSILON_TOLERANCE = 0.01  # as Opacus's get_noise_multiplier: total epsilon in [target - 0.01, target]
MIN_VALIDATION_ROWS = 100  # expected validation rows (noisy count x the contract's split) at least


def gaussian_delta(epsilon: float, noise_multiplier: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Theorem 8)."""
    a, b = 1 / (2 * noise_multiplier), epsilon * noise_multiplier
    return float(ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b)))


def gaussian_noise_for(epsilon: float, delta: float) -> float:
    """The smallest noise multiplier whose Gaussian mechanism is (epsilon, delta)-DP."""
    low, high = 1e-3, 1.0
    while gaussian_delta(epsilon, high) > delta:
        low, high = high, high * 2
    for _ in range(60):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if gaussian_delta(epsilon, middle) > delta else (low, middle)
    return high


def _composed(multipliers) -> float:
    """Gaussian mechanisms composed are one Gaussian: 1 / sigma^2 adds up."""
    return 1 / math.sqrt(sum(1 / s ** 2 for s in multipliers))


@dataclass(frozen=True)
class FixedNoise:
    """Noise multipliers of the mechanisms other than DP-SGD (None: the mechanism does not run)."""
    count: float
    statistics: float
    confusion: float
    histogram: float | None
    loss: float | None

    def releases(self) -> list[GaussianRelease]:
        named = (("joined_row_count", self.count), ("scaling_statistics", self.statistics),
                 ("confusion_counts", self.confusion), ("score_histogram", self.histogram),
                 ("validation_loss", self.loss))
        return [GaussianRelease(name, sigma) for name, sigma in named if sigma is not None]


def fixed_noise(target_epsilon: float, delta: float, roc_auc: bool, loss: bool,
                count: float | None = None) -> FixedNoise:
    """Reference multipliers x k, k solved so that the fixed mechanisms spend FIXED_SHARE of the
    target at `delta`; `count` keeps the row count's multiplier once it has been released."""
    others = [STATISTICS_NOISE_MULTIPLIER, CONFUSION_NOISE_MULTIPLIER] + \
        [HISTOGRAM_NOISE_MULTIPLIER] * roc_auc + [LOSS_NOISE_MULTIPLIER] * loss
    wanted = gaussian_noise_for(FIXED_SHARE * target_epsilon, delta)  # the composed multiplier allowed
    if count is None:
        scale = wanted / _composed([COUNT_NOISE_MULTIPLIER] + others)
    else:
        room = 1 / wanted ** 2 - 1 / count ** 2
        scale = math.inf if room <= 0 else 1 / math.sqrt(room) / _composed(others)
    if scale > MAX_SCALE:
        raise PrivacyBudgetError(f"epsilon {target_epsilon} is too small to release even the row count, "
                                 f"scaling statistics and evaluation metrics at delta {delta:.3g}")
    return FixedNoise(count if count is not None else COUNT_NOISE_MULTIPLIER * scale,
                      STATISTICS_NOISE_MULTIPLIER * scale, CONFUSION_NOISE_MULTIPLIER * scale,
                      HISTOGRAM_NOISE_MULTIPLIER * scale if roc_auc else None,
                      LOSS_NOISE_MULTIPLIER * scale if loss else None)


def run_delta(contract_delta: float, training_rows_estimate: float) -> float:
    """The contract's delta, capped at 1 / (estimated training rows): a delta of 1/n or more
    would allow releasing a row. The estimate is the noisy count's, never n."""
    return min(contract_delta, 1.0 / max(training_rows_estimate, 1.0))


def plan_dp_sgd(training_rows_estimate: float, batch_size: int, epochs: int, target_epsilon: float, delta: float,
                max_grad_norm: float, fixed: list[GaussianRelease]) -> PrivacyPlan:
    """DP-SGD's noise multiplier such that `fixed` + DP-SGD composed (PLD) lie within
    EPSILON_TOLERANCE below the target; sample rate and steps from the row estimate."""
    if pld_epsilon(fixed, delta) >= target_epsilon - EPSILON_TOLERANCE:
        raise PrivacyBudgetError(f"epsilon {target_epsilon} does not leave DP-SGD any budget")
    steps_per_epoch = max(1, math.ceil(training_rows_estimate / batch_size))
    sample_rate = 1.0 / steps_per_epoch
    expected_batch = max(1, round(training_rows_estimate * sample_rate))

    def plan(noise: float) -> PrivacyPlan:
        return PrivacyPlan(noise, max_grad_norm, sample_rate, steps_per_epoch, epochs, expected_batch)

    def total(noise: float) -> float:
        return pld_epsilon(fixed + [plan(noise).release()], delta)

    low, high = 0.0, 2.0
    while total(high) > target_epsilon:
        low, high = high, 2 * high
    while target_epsilon - total(high) > EPSILON_TOLERANCE:
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) > target_epsilon else (low, middle)
    return plan(high)


@dataclass(frozen=True)
class RunPrivacy:
    """The plan as it stands: built from constants before any data is read (`before_data`),
    completed by the noisy count (`after_count`)."""
    target_epsilon: float
    contract_delta: float
    validation_split: float
    min_joined_rows: int
    noise: FixedNoise
    roc_auc: bool
    loss: bool
    delta: float | None = None
    joined_rows_estimate: float | None = None
    dp_sgd: PrivacyPlan | None = None

    @classmethod
    def before_data(cls, target_epsilon: float, contract_delta: float, validation_split: float,
                    min_joined_rows: int, roc_auc: bool, loss: bool) -> "RunPrivacy":
        """Refuses (PrivacyBudgetError) a target too small for the fixed mechanisms."""
        noise = fixed_noise(target_epsilon, contract_delta, roc_auc, loss)
        return cls(target_epsilon, contract_delta, validation_split, min_joined_rows, noise, roc_auc, loss)

    def check_size(self, joined_rows_estimate: float) -> None:
        """The contract's minimum and the trainer's minimum validation size, against the noisy
        count only; the messages carry constants only, whatever the count."""
        if joined_rows_estimate < self.min_joined_rows:
            raise JoinError(f"the join has fewer rows than the contract's minimum ({self.min_joined_rows})")
        if joined_rows_estimate * self.validation_split < MIN_VALIDATION_ROWS:
            raise JoinError(f"the join is too small for a validation set of at least {MIN_VALIDATION_ROWS} "
                                   f"rows at the contract's validation split ({self.validation_split})")

    def after_count(self, joined_rows_estimate: float, batch_size: int, epochs: int,
                    max_grad_norm: float) -> "RunPrivacy":
        """The plan completed from the noisy count: the run's delta, the remaining fixed
        mechanisms' noise at that delta, DP-SGD's parameters."""
        self.check_size(joined_rows_estimate)
        training_estimate = joined_rows_estimate * (1 - self.validation_split)
        delta = run_delta(self.contract_delta, training_estimate)
        noise = fixed_noise(self.target_epsilon, delta, self.roc_auc, self.loss, count=self.noise.count)
        if noise.statistics < self.noise.statistics:  # never less noise than planned before the data
            noise = self.noise
        dp_sgd = plan_dp_sgd(training_estimate, batch_size, epochs, self.target_epsilon, delta, max_grad_norm,
                             noise.releases())
        return replace(self, noise=noise, delta=delta, joined_rows_estimate=joined_rows_estimate, dp_sgd=dp_sgd)

    def planned(self) -> list[GaussianRelease]:
        return self.noise.releases() + ([self.dp_sgd.release()] if self.dp_sgd else [])

    def check_charged(self, accountant: Accountant) -> None:
        """What ran is what was planned (or less): the total cannot exceed the target."""
        planned = self.planned()
        if any(release not in planned for release in accountant.releases) or \
                len(set(accountant.releases)) != len(accountant.releases):
            raise PrivacyBudgetError("a mechanism ran outside the run's privacy plan")
