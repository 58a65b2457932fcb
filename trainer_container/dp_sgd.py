"""DP-SGD for chains of nn.Linear and parameter-free layers, with Opacus's privacy semantics at
a fraction of Opacus's per-step cost; one mechanism of the run, charged to its accountant as
`GaussianRelease("dp_sgd", noise_multiplier, sample_rate, steps)`.

Why not `PrivacyEngine.make_private`: its hooks, DataLoader collation and O(N) Poisson sampler
cost 3-5x the non-private step for small MLPs (see DESIGN.md). What is kept identical to
Opacus (opacus/optimizers/optimizer.py, opacus/data_loader.py):
- Poisson sampling: every training row joins a step's batch independently with probability
  `sample_rate = 1 / steps_per_epoch`, `steps_per_epoch = ceil(n_train / batch_size)`, where
  n_train is the *noisy* training-row estimate (privacy_plan.py): the row count is private;
- per-sample clipping: factor `min(1, max_grad_norm / (||g_i|| + 1e-6))` over the whole
  per-sample gradient (flat clipping);
- noise: N(0, (noise_multiplier * max_grad_norm)^2) added to the clipped sum, then divided by
  the expected batch size (`loss_reduction="mean"`); drawn as Opacus's secure mode does (sum of
  four samples) from the run's cryptographically secure source (secure_random.py), never from
  torch's generator.
What differs is only how the clipped sum is computed: for a Linear layer the per-sample
gradient is the outer product b_i a_i^T (output gradient, input), so its squared norm is
||b_i||^2 ||a_i||^2 and the clipped sum is (c * B)^T A: one matmul, no per-sample tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer_container.accountant import GaussianRelease
from trainer_container.secure_random import SecureRandom


class PrivacyBudgetError(ValueError):
    """The run cannot meet the contract's privacy budget."""


@dataclass(frozen=True)
class PrivacyPlan:
    """DP-SGD's parameters, every one from contract/config constants and the noisy row count."""
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps_per_epoch: int
    epochs: int
    expected_batch_size: int

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def release(self) -> GaussianRelease:
        return GaussianRelease("dp_sgd", self.noise_multiplier, self.sample_rate, self.steps)


def check_supported(model: nn.Module) -> None:
    """Only Linear layers may hold parameters (the per-sample gradient formula above)."""
    for module in model.children():
        if not isinstance(module, nn.Linear) and any(True for _ in module.parameters()):
            raise ValueError(f"DP-SGD supports parameters only in Linear layers, not {type(module).__name__}")


class PrivateStep:
    """One DP-SGD step on a nn.Sequential model: clip per sample, sum, add noise, step."""

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, loss_sum,
                 plan: PrivacyPlan, noise: SecureRandom):
        check_supported(model)
        self.model, self.optimizer, self.loss_sum, self.plan = model, optimizer, loss_sum, plan
        self.linears = [m for m in model if isinstance(m, nn.Linear)]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        # Every gradient is a view into one flat buffer: noise and scaling are one op each.
        self.flat_grad = torch.zeros(sum(p.numel() for p in params))
        offset = 0
        for p in params:
            p.grad = self.flat_grad[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        self.grads = [(layer.weight.grad, None if layer.bias is None else layer.bias.grad) for layer in self.linears]
        if any(p.grad is None for layer in self.linears for p in layer.parameters()):
            raise ValueError("every Linear parameter must be optimized")
        self.noise = noise
        # noise std and the 1 / expected batch size of loss_reduction="mean", applied together
        self.scale = 1.0 / plan.expected_batch_size
        self.std = plan.noise_multiplier * plan.max_grad_norm * self.scale
        self.steps_taken = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            self.flat_grad.zero_()
        if len(x):  # an empty Poisson batch still takes a (pure noise) step, as in Opacus
            inputs, outputs, h = [], [], x
            for layer in self.model:
                if isinstance(layer, nn.Linear):
                    inputs.append(h)
                    h = layer(h)
                    outputs.append(h)
                else:
                    h = layer(h)
            backprops = torch.autograd.grad(self.loss_sum(h, y), outputs)
            with torch.no_grad():
                sq_norms = torch.zeros(len(x))
                for layer, a, b in zip(self.linears, inputs, backprops):
                    b_sq = torch.linalg.vecdot(b, b)
                    sq_norms.addcmul_(b_sq, torch.linalg.vecdot(a, a) + (layer.bias is not None))
                clip = (self.plan.max_grad_norm / (sq_norms.sqrt_() + 1e-6)).clamp_(max=1.0).mul_(self.scale)
                for (weight, bias), a, b in zip(self.grads, inputs, backprops):
                    clipped = b * clip[:, None]
                    torch.matmul(clipped.T, a, out=weight)
                    if bias is not None:
                        torch.sum(clipped, 0, out=bias)
        with torch.no_grad():
            self.flat_grad.add_(self.noise.normal(len(self.flat_grad), self.std, torch.float32))
        self.optimizer.step()
        self.steps_taken += 1
