"""A small model trains on one torch thread (splitting its tiny operators costs more than it
gains, and far more when the cores are shared: trainer_container/training.py); a large one keeps
torch's setting; either way the process's setting is restored once training ends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from local_emulator import loan_reference
from shared.pipeline import TrainingConfig
from trainer_container.accountant import Accountant
from trainer_container.dp_sgd import PrivacyPlan
from trainer_container.features import Split, Standardizer
from trainer_container.secure_random import SecureRandom
from trainer_container.training import SINGLE_THREAD_PARAMETERS, train_private

ROWS, FEATURES = 2000, loan_reference.N_FEATURES


def _threads_while_training(model: nn.Sequential) -> set[int]:
    """torch's thread count seen by every forward pass of one short private epoch."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(ROWS, FEATURES)).astype(np.float32))
    y = torch.from_numpy((rng.random(ROWS) < 0.3).astype(np.float32))
    scaling = Standardizer(np.zeros(FEATURES), np.ones(FEATURES), np.zeros(FEATURES), np.ones(FEATURES))
    split = Split(x, y, x[:500], y[:500], x[:500].numpy(), scaling)
    config = TrainingConfig.from_dict(loan_reference.loan_training_config(batch_size=256, epochs=1))
    plan = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=256 / ROWS, steps_per_epoch=ROWS // 256,
                       epochs=1, expected_batch_size=256)  # what the planner would make of it, without its search
    seen = set()
    model[0].register_forward_hook(lambda *_: seen.add(torch.get_num_threads()))  # the step calls each layer
    train_private(model, split, config, plan, SecureRandom(bytes(32)), Accountant(), progress=lambda _: None)
    return seen


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_small_model_trains_on_one_thread_and_the_setting_is_restored(two_threads):
    model = loan_reference.loan_mlp()
    assert sum(p.numel() for p in model.parameters()) <= SINGLE_THREAD_PARAMETERS
    assert _threads_while_training(model) == {1}
    assert torch.get_num_threads() == 2


def test_a_large_model_keeps_the_process_setting(two_threads):
    width = SINGLE_THREAD_PARAMETERS // FEATURES + 1
    model = nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, 1))
    assert _threads_while_training(model) == {2}
    assert torch.get_num_threads() == 2
