"""The training loop: allow-listed loss and optimizer, DP-SGD steps on Poisson-sampled batches,
nothing data-dependent released while it runs (no per-epoch metrics: the evaluation is one DP
release at the end, dp_evaluation.py; only the epoch counter, via progress_report.py). Deterministic given the config's seed and the secure source's key."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from shared.pipeline import TrainingConfig
from trainer_container.accountant import Accountant
from trainer_container.dp_sgd import PrivacyPlan, PrivateStep
from trainer_container.features import Split
from trainer_container.secure_random import SecureRandom


# A model at most this large trains on one torch thread (bench/loan_scale.py, issue 15): a DP-SGD
# step of the loan MLP (417 parameters, batch 256) took 4.1 ms on one thread and 5.2 ms on two
# with 2.5x the CPU, and 78 ms on two when the container's cores were shared (the operators'
# threads wait at every barrier for a descheduled sibling). Past about 25 M multiply-adds a step
# (batch 256 x 100 k parameters) splitting an operator starts to pay for its barrier.
SINGLE_THREAD_PARAMETERS = 100_000


@contextmanager
def _operator_threads(model: nn.Module) -> Iterator[None]:
    """torch's intra-op threads while `model` trains: one for a small model, torch's default
    otherwise; the process's setting is restored afterwards."""
    before = torch.get_num_threads()
    if sum(p.numel() for p in model.parameters()) <= SINGLE_THREAD_PARAMETERS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def output_width(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


class TrainingSetupError(ValueError):
    """The model, the loss and the joined data do not fit together (message names no values)."""


def check_model_fits(model: nn.Module, loss: str, n_features: int) -> None:
    """Fail before any data is read if the model's input/output shape cannot serve the loss."""
    if getattr(model, "in_features", n_features) != n_features:
        raise TrainingSetupError(f"the model expects {model.in_features} features, the join selects {n_features}")
    width = output_width(model)
    if loss == "cross_entropy" and width < 2:
        raise TrainingSetupError("cross_entropy needs a model with one output per class")
    if loss != "cross_entropy" and width != 1:
        raise TrainingSetupError(f"{loss} needs a model with a single output")


def check_targets(y: torch.Tensor, loss: str, width: int) -> None:
    """Class labels must be 0/1 (binary losses) or 0..width-1 (cross_entropy)."""
    classes = width if loss == "cross_entropy" else 2
    if not bool(((y == y.round()) & (y >= 0) & (y < classes)).all()):
        raise TrainingSetupError(f"the target column must hold class labels 0..{classes - 1} for {loss}")


def targets(y: torch.Tensor, loss: str) -> torch.Tensor:
    return y.long() if loss == "cross_entropy" else y[:, None]


def loss_function(loss: str, reduction: str) -> Callable:
    return {"bce_with_logits": nn.BCEWithLogitsLoss, "bce": nn.BCELoss, "mse": nn.MSELoss,
            "cross_entropy": nn.CrossEntropyLoss}[loss](reduction=reduction)


def make_optimizer(config: TrainingConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def predictions(output: torch.Tensor, loss: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted class, positive-class score) from raw model outputs."""
    if loss == "cross_entropy":
        probs = torch.softmax(output, dim=1)
        score = probs[:, 1].numpy() if probs.shape[1] == 2 else None
        return probs.argmax(1).numpy(), score
    score = torch.sigmoid(output[:, 0]) if loss == "bce_with_logits" else output[:, 0]
    return (score >= 0.5).long().numpy(), score.numpy()


def private_epoch(step: PrivateStep, x: torch.Tensor, y: torch.Tensor, noise: SecureRandom) -> int:
    """One epoch of Poisson-sampled DP-SGD steps; returns the rows seen (for benchmarks only)."""
    seen = 0
    for _ in range(step.plan.steps_per_epoch):
        idx = torch.from_numpy(noise.poisson_batch(len(x), step.plan.sample_rate))
        step(x[idx], y[idx])
        seen += len(idx)
    return seen


def train_private(model: nn.Sequential, split: Split, config: TrainingConfig, plan: PrivacyPlan,
                  noise: SecureRandom, accountant: Accountant, progress: Callable[[str], None] = print,
                  epoch_done: Callable[[int], None] | None = None) -> None:
    """DP-SGD over the training split, charged to `accountant` before the first step. Batches
    and noise come from the run's secure source: DP assumes batches the adversary cannot predict.
    `epoch_done(epoch)` runs after each epoch (the attested progress: progress_report.py)."""
    check_targets(torch.cat([split.train_y, split.val_y]), config.loss, output_width(model))
    torch.manual_seed(config.seed)
    model.train()
    accountant.charge(plan.release())
    step = PrivateStep(model, make_optimizer(config, model), loss_function(config.loss, "sum"), plan, noise)
    y_all = targets(split.train_y, config.loss)
    with _operator_threads(model):
        for epoch in range(1, plan.epochs + 1):
            private_epoch(step, split.train_x, y_all, noise)
            progress(f"epoch {epoch}/{plan.epochs} done")  # a constant line: no value of the epoch leaves
            if epoch_done is not None:
                epoch_done(epoch)
    model.eval()


def train_non_private_epoch(model: nn.Module, optimizer, loss_mean, x: torch.Tensor, y: torch.Tensor,
                            batch_size: int, generator: torch.Generator) -> None:
    """Plain mini-batch training over shuffled slices: the baseline the benchmark compares with."""
    order = torch.randperm(len(x), generator=generator)
    x, y = x[order], y[order]
    for start in range(0, len(x), batch_size):
        optimizer.zero_grad(set_to_none=True)
        loss_mean(model(x[start:start + batch_size]), y[start:start + batch_size]).backward()
        optimizer.step()
