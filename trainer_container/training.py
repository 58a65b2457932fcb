"""The training loop: allow-listed loss and optimizer, DP-SGD steps, one epsilon per epoch,
validation metrics, and the privacy report. Deterministic given the config's seed and the
DP noise generator's seed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from shared.pipeline import TrainingConfig
from trainer_container.dp_sgd import PrivacyPlan, PrivateStep, poisson_batch
from trainer_container.features import Split
from trainer_container.metrics import classification_metrics


@dataclass
class TrainingResult:
    metrics: dict
    privacy: dict
    epochs: list[dict]


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


def _targets(y: torch.Tensor, loss: str) -> torch.Tensor:
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


def _outputs_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainingConfig):
    model.eval()
    with torch.no_grad():
        output = model(x)
        loss = float(loss_function(config.loss, "mean")(output, _targets(y, config.loss)))
    model.train()
    return output, loss


def validation_loss(model: nn.Module, split: Split, config: TrainingConfig) -> float:
    return _outputs_and_loss(model, split.val_x, split.val_y, config)[1]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainingConfig) -> dict:
    output, loss = _outputs_and_loss(model, x, y, config)
    predicted, score = predictions(output, config.loss)
    n_classes = output.shape[1] if config.loss == "cross_entropy" else 2
    metrics = {"loss": loss}
    metrics.update(classification_metrics(y.numpy(), predicted, score, n_classes, config.metrics))
    return metrics


def private_epoch(step: PrivateStep, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[float, int]:
    """One epoch of Poisson-sampled DP-SGD steps; returns (summed loss, rows seen)."""
    total, seen = 0.0, 0
    for _ in range(step.plan.steps_per_epoch):
        idx = torch.from_numpy(poisson_batch(len(x), step.plan.sample_rate, rng))
        total += step(x[idx], y[idx])
        seen += len(idx)
    return total, seen


def train_private(model: nn.Sequential, split: Split, config: TrainingConfig, plan: PrivacyPlan,
                  noise: torch.Generator, progress: Callable[[str], None] = print) -> TrainingResult:
    """`noise`: the run's DP noise generator, which already drew the feature statistics' noise.
    Poisson sampling is seeded from it too: DP assumes batches the adversary cannot predict."""
    check_targets(torch.cat([split.train_y, split.val_y]), config.loss, output_width(model))
    torch.manual_seed(config.seed)
    model.train()
    optimizer = make_optimizer(config, model)
    loss_sum = loss_function(config.loss, "sum")
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=noise)))
    step = PrivateStep(model, optimizer, loss_sum, plan, noise)
    y_all = _targets(split.train_y, config.loss)
    history = []
    for epoch in range(1, plan.epochs + 1):
        private_epoch(step, split.train_x, y_all, rng)
        epsilon = step.epsilon()  # once per epoch: the accountant is costly to query
        # The loss shown is the validation split's: the exact loss over training rows is an
        # aggregate of the very rows DP-SGD protects, and it would leave outside the epsilon.
        record = {"epoch": epoch, "validation_loss": validation_loss(model, split, config), "epsilon": epsilon}
        history.append(record)
        progress(f"epoch {epoch}/{plan.epochs} validation loss {record['validation_loss']:.4f} "
                 f"epsilon {epsilon:.3f}")
    metrics = evaluate(model, split.val_x, split.val_y, config)
    return TrainingResult(metrics, privacy_report(plan, history[-1]["epsilon"], split), history)


def privacy_report(plan: PrivacyPlan, epsilon: float, split: Split) -> dict:
    """privacy.json and the completion event's `privacy`: `epsilon` is the run's total (feature
    statistics + DP-SGD, composed in one RDP accountant); `noise_multiplier` is DP-SGD's."""
    return {"epsilon": epsilon, "target_epsilon": plan.target_epsilon, "delta": plan.delta,
            "noise_multiplier": plan.noise_multiplier, "max_grad_norm": plan.max_grad_norm,
            "sample_rate": plan.sample_rate, "steps": plan.steps, "epochs": plan.epochs,
            "accountant": plan.accountant, "train_rows": len(split.train_x), "validation_rows": len(split.val_x),
            "outside_epsilon": ["validation metrics and per-epoch validation loss (held-out rows, exact)",
                                "row counts (joined, training, validation)",
                                "the ONNX check's maximum difference on the validation rows"],
            "feature_scaling": {
                "bounds": "public: the training config's feature_bounds; features clipped to them",
                "mechanism": "gaussian: per-feature sums of the bound-normalized values and of their squares",
                "noise_multiplier": plan.statistics_noise_multiplier, "sample_rate": 1.0, "steps": 1}}


def train_non_private_epoch(model: nn.Module, optimizer, loss_mean, x: torch.Tensor, y: torch.Tensor,
                            batch_size: int, generator: torch.Generator) -> None:
    """Plain mini-batch training over shuffled slices: the baseline the benchmark compares with."""
    order = torch.randperm(len(x), generator=generator)
    x, y = x[order], y[order]
    for start in range(0, len(x), batch_size):
        optimizer.zero_grad(set_to_none=True)
        loss_mean(model(x[start:start + batch_size]), y[start:start + batch_size]).backward()
        optimizer.step()
