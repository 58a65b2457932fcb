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
- accounting: `opacus.accountants.RDPAccountant`, one `step` per optimizer step, and the
  noise multiplier from `opacus.accountants.utils.get_noise_multiplier(accountant="rdp")`.
What differs is only how the clipped sum is computed: for a Linear layer the per-sample
gradient is the outer product b_i a_i^T (output gradient, input), so its squared norm is
||b_i||^2 ||a_i||^2 and the clipped sum is (c * B)^T A: one matmul, no per-sample tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

ACCOUNTANT = "rdp"


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
    accountant: str = ACCOUNTANT

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def effective_delta(contract_delta: float, n_train: int) -> float:
    """The contract's delta, capped at 1/N: a delta of 1/N or more would allow releasing a row."""
    return min(contract_delta, 1.0 / n_train)


def plan_privacy(n_train: int, batch_size: int, epochs: int, target_epsilon: float,
                 contract_delta: float, max_grad_norm: float) -> PrivacyPlan:
    if n_train < 2:
        raise PrivacyBudgetError("too few training rows for DP-SGD")
    steps_per_epoch = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / steps_per_epoch
    delta = effective_delta(contract_delta, n_train)
    noise = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                 epochs=epochs, accountant=ACCOUNTANT)
    return PrivacyPlan(target_epsilon, delta, float(noise), max_grad_norm, sample_rate, steps_per_epoch,
                       epochs, expected_batch_size=max(1, round(n_train * sample_rate)))


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
                 plan: PrivacyPlan, noise_seed: int):
        check_supported(model)
        self.model, self.optimizer, self.loss_sum, self.plan = model, optimizer, loss_sum, plan
        self.linears = [m for m in model if isinstance(m, nn.Linear)]
        self.noise = torch.Generator().manual_seed(noise_seed)
        self.accountant = RDPAccountant()
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
        return float(self.accountant.get_epsilon(delta=self.plan.delta))
