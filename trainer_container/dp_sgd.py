"""DP-SGD for chains of nn.Linear and parameter-free layers, with Opacus's privacy semantics
and Opacus's RDP accountant, at a fraction of Opacus's per-step cost.

Why not `PrivacyEngine.make_private`: its hooks, DataLoader collation and O(N) Poisson sampler
cost 3-5x the non-private step for small MLPs (see DESIGN.md). What is kept identical to
Opacus (opacus/optimizers/optimizer.py, opacus/data_loader.py):
- Poisson sampling: every row joins a step's batch independently with probability
  `sample_rate = 1 / steps_per_epoch`, `steps_per_epoch = ceil(N / batch_size)`;
- per-sample clipping: factor `min(1, max_grad_norm / (||g_i|| + 1e-6))` over the whole
  per-sample gradient (flat clipping);
- noise: N(0, (noise_multiplier * max_grad_norm)^2) added to the clipped sum, then divided by
  the expected batch size (`loss_reduction="mean"`);
- accounting: `opacus.accountants.RDPAccountant` (over more orders: `Accountant`), one `step`
  per optimizer step.
What differs is only how the clipped sum is computed: for a Linear layer the per-sample
gradient is the outer product b_i a_i^T (output gradient, input), so its squared norm is
||b_i||^2 ||a_i||^2 and the clipped sum is (c * B)^T A: one matmul, no per-sample tensors.

The run releases one more thing computed from the training rows: the feature-scaling
statistics (features.py), a Gaussian mechanism on the whole training split with noise
multiplier `statistics_noise_multiplier(target, delta)`. It is one accountant step with sample_rate=1.0 before
the DP-SGD steps, so the accountant's epsilon is the run's total, and the DP-SGD noise
multiplier is searched so that this total meets the target (Opacus's `get_noise_multiplier`
knows only the DP-SGD steps).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from torch import nn

ACCOUNTANT = "rdp"
# The feature statistics' noise multiplier: at least this, so that they cost a small, known part
# of the budget. At the COVID settings (1695 rows, batch 64, 5 epochs, epsilon 1.5, delta 1e-5)
# the DP-SGD noise multiplier rises from 1.543 to 1.67 (DP-SGD alone would then spend about 1.33
# of the 1.5), and the noisy means and scales stay close to the exact ones (README: figures).
# On its own it spends 0.65 at delta 1e-5; a smaller target doubles it until the statistics
# alone spend at most half the target (noisier scaling rather than a refused run).
STATISTICS_NOISE_MULTIPLIER = 6.0
MAX_STATISTICS_NOISE_MULTIPLIER = STATISTICS_NOISE_MULTIPLIER * 2 ** 10
EPSILON_TOLERANCE = 0.01  # as Opacus's get_noise_multiplier: total epsilon in [target - 0.01, target]


class Accountant(RDPAccountant):
    """Opacus's RDP accountant over more orders. Strong noise (small epsilons, and the feature
    statistics' large multiplier) has its best order above Opacus's largest, 63, which caps
    what it can certify at about log(1/delta) / 62 (0.19 at delta 1e-5); any order is sound."""
    DEFAULT_ALPHAS = RDPAccountant.DEFAULT_ALPHAS + list(range(64, 256, 8)) + [256, 384, 512, 768, 1024, 2048, 4096]

    def get_privacy_spent(self, *, delta: float, alphas=None):
        with warnings.catch_warnings():  # an optimum at the largest order is a looser bound, still sound
            warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
            return super().get_privacy_spent(delta=delta, alphas=alphas)


class PrivacyBudgetError(ValueError):
    """The run cannot meet the contract's privacy budget."""


@dataclass(frozen=True)
class PrivacyPlan:
    target_epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps_per_epoch: int
    epochs: int
    expected_batch_size: int
    statistics_noise_multiplier: float
    accountant: str = ACCOUNTANT

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def new_accountant(self) -> Accountant:
        """An accountant already charged with the feature statistics (one full-data Gaussian
        release), so that it reports the run's total epsilon as DP-SGD steps are added."""
        accountant = Accountant()
        accountant.step(noise_multiplier=self.statistics_noise_multiplier, sample_rate=1.0)
        return accountant


def effective_delta(contract_delta: float, n_train: int) -> float:
    """The contract's delta, capped at 1/N: a delta of 1/N or more would allow releasing a row."""
    return min(contract_delta, 1.0 / n_train)


def total_epsilon(plan: PrivacyPlan) -> float:
    """Epsilon at the plan's delta of everything the run releases: statistics + all DP-SGD steps."""
    accountant = plan.new_accountant()
    for _ in range(plan.steps):
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    return float(accountant.get_epsilon(delta=plan.delta))


def statistics_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of the feature statistics' release alone."""
    accountant = Accountant()
    accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return float(accountant.get_epsilon(delta=delta))


def statistics_noise_multiplier(target_epsilon: float, delta: float) -> float:
    """STATISTICS_NOISE_MULTIPLIER, doubled until the statistics spend at most half the target.
    Needs no data, so a hopeless target is refused before any is read."""
    noise = STATISTICS_NOISE_MULTIPLIER
    while statistics_epsilon(noise, delta) > target_epsilon / 2:
        noise *= 2
        if noise > MAX_STATISTICS_NOISE_MULTIPLIER:
            raise PrivacyBudgetError(f"epsilon {target_epsilon} is too small to release even the "
                                     f"feature scaling statistics at delta {delta:.3g}")
    check_covers_statistics(target_epsilon, delta, noise)
    return noise


def check_covers_statistics(target_epsilon: float, delta: float, statistics_noise: float) -> None:
    """The feature statistics alone must leave room for DP-SGD."""
    statistics_only = statistics_epsilon(statistics_noise, delta)
    if statistics_only >= target_epsilon - EPSILON_TOLERANCE:
        raise PrivacyBudgetError(f"epsilon {target_epsilon} does not cover the feature scaling statistics, "
                                 f"which alone spend {statistics_only:.3f} at delta {delta:.3g}")


def plan_privacy(n_train: int, batch_size: int, epochs: int, target_epsilon: float, contract_delta: float,
                 max_grad_norm: float, statistics_noise: float) -> PrivacyPlan:
    """The DP-SGD noise multiplier whose total epsilon (statistics included) lies within
    EPSILON_TOLERANCE below the target: Opacus's search (double, then bisect) with the
    statistics step composed in. The row count is public, as the sample rate needs it."""
    if n_train < 2:
        raise PrivacyBudgetError("too few training rows for DP-SGD")
    delta = effective_delta(contract_delta, n_train)
    check_covers_statistics(target_epsilon, delta, statistics_noise)
    steps_per_epoch = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / steps_per_epoch

    def plan(noise: float) -> PrivacyPlan:
        return PrivacyPlan(target_epsilon, delta, noise, max_grad_norm, sample_rate, steps_per_epoch, epochs,
                           max(1, round(n_train * sample_rate)), statistics_noise)

    low, high = 0.0, 10.0
    while total_epsilon(plan(high)) > target_epsilon:
        low, high = high, 2 * high
    while target_epsilon - total_epsilon(plan(high)) > EPSILON_TOLERANCE:
        middle = (low + high) / 2
        low, high = (middle, high) if total_epsilon(plan(middle)) > target_epsilon else (low, middle)
    return plan(high)


def poisson_batch(n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a Poisson-sampled batch (each of n rows kept with probability sample_rate),
    drawn as geometric gaps between kept rows: O(batch) instead of O(n) per step."""
    if sample_rate >= 1.0:
        return np.arange(n)
    expected = n * sample_rate
    chunk = int(expected + 6 * math.sqrt(expected) + 16)
    positions = np.cumsum(rng.geometric(sample_rate, size=chunk)) - 1
    while positions[-1] < n:
        positions = np.concatenate([positions, positions[-1] + np.cumsum(rng.geometric(sample_rate, size=chunk))])
    return positions[positions < n]


def check_supported(model: nn.Module) -> None:
    """Only Linear layers may hold parameters (the per-sample gradient formula above)."""
    for module in model.children():
        if not isinstance(module, nn.Linear) and any(True for _ in module.parameters()):
            raise ValueError(f"DP-SGD supports parameters only in Linear layers, not {type(module).__name__}")


class PrivateStep:
    """One DP-SGD step on a nn.Sequential model: clip per sample, sum, add noise, step, account."""

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, loss_sum,
                 plan: PrivacyPlan, noise: torch.Generator):
        check_supported(model)
        self.model, self.optimizer, self.loss_sum, self.plan = model, optimizer, loss_sum, plan
        self.linears = [m for m in model if isinstance(m, nn.Linear)]
        self.noise = noise
        self.accountant = plan.new_accountant()
        self.std = plan.noise_multiplier * plan.max_grad_norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Returns the batch's summed (unclipped) loss, for progress reporting only."""
        loss_value = 0.0
        if len(x):
            inputs, outputs, h = [], [], x
            for layer in self.model:
                if isinstance(layer, nn.Linear):
                    inputs.append(h)
                    h = layer(h)
                    outputs.append(h)
                else:
                    h = layer(h)
            loss = self.loss_sum(h, y)
            backprops = torch.autograd.grad(loss, outputs)
            loss_value = float(loss.detach())
            with torch.no_grad():
                sq_norms = torch.zeros(len(x))
                for layer, a, b in zip(self.linears, inputs, backprops):
                    b_sq = b.square().sum(1)
                    sq_norms += b_sq * a.square().sum(1)
                    if layer.bias is not None:
                        sq_norms += b_sq
                clip = (self.plan.max_grad_norm / (sq_norms.sqrt() + 1e-6)).clamp(max=1.0)
                for layer, a, b in zip(self.linears, inputs, backprops):
                    clipped = b * clip[:, None]
                    layer.weight.grad = clipped.T @ a
                    if layer.bias is not None:
                        layer.bias.grad = clipped.sum(0)
        else:  # an empty Poisson batch still takes a (pure noise) step, as in Opacus
            for layer in self.linears:
                for p in layer.parameters():
                    p.grad = torch.zeros_like(p)
        with torch.no_grad():
            for p in (p for group in self.optimizer.param_groups for p in group["params"]):
                p.grad.add_(torch.normal(0.0, self.std, p.shape, generator=self.noise))
                p.grad.div_(self.plan.expected_batch_size)
        self.optimizer.step()
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
        return loss_value

    def epsilon(self) -> float:
        """The run's total so far: the feature statistics and the steps taken."""
        return float(self.accountant.get_epsilon(delta=self.plan.delta))


def noise_generator(seed: int) -> torch.Generator:
    """The one generator all DP noise of a run is drawn from (feature statistics first, then
    every DP-SGD step), so the run is reproducible given the seed."""
    return torch.Generator().manual_seed(seed)
