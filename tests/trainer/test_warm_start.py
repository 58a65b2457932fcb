"""A continued run starts from the previous run's model inside the clean room: the loan model's
weights and scaling constants come back exactly (same digest), its loss at step 0 on the new
version's rows equals the previous model's, training then moves them, and a state that does
not fit the contract's model or bounds is refused before any data is read."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

from local_emulator import loan_reference as loan
from local_emulator.loan_data import joined_sample
from shared.pipeline import TrainingConfig
from trainer_container import model_state
from trainer_container.accountant import Accountant
from trainer_container.dp_sgd import PrivacyPlan
from trainer_container.export import export_onnx, with_standardization
from trainer_container.features import split_and_scale, split_with_standardizer
from trainer_container.onnx_convert import load_model, onnx_to_torch
from trainer_container.secure_random import SecureRandom
from trainer_container.training import loss_function, targets, train_private

CONFIG = TrainingConfig.from_dict(loan.loan_training_config(epochs=1))
LOW, HIGH = (np.array([CONFIG.feature_bounds[c][i] for c in loan.FEATURE_COLUMNS], dtype=np.float64) for i in (0, 1))
SPLIT = 0.2


def loan_version(rows: int, seed: int) -> pd.DataFrame:
    """One version of the joined loan table (the synthetic bank and bureau rows, joined)."""
    x, y = joined_sample(rows, seed, loan.FEATURE_COLUMNS, loan.TARGET)
    table = pd.DataFrame(x, columns=list(loan.FEATURE_COLUMNS))
    table[loan.TARGET] = y
    return table


# DP-SGD and scaling noise as a run on 3,000 rows would plan them (planning itself takes seconds
# and is tested elsewhere): batch 128 of about 2,400 training rows, one epoch.
DP_SGD = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=CONFIG.max_grad_norm, sample_rate=128 / 2400,
                     steps_per_epoch=19, epochs=1, expected_batch_size=128)
STATISTICS_NOISE = 12.0


@pytest.fixture(scope="module")
def previous_run():
    """The first run on version 1: DP scaling, one DP-SGD epoch (the model its TDC received)."""
    table, noise, accountant = loan_version(3000, seed=1), SecureRandom(bytes(32)), Accountant()
    split = split_and_scale(table, loan.FEATURE_COLUMNS, loan.TARGET, SPLIT, CONFIG.feature_bounds, noise,
                            STATISTICS_NOISE, accountant)
    model = onnx_to_torch(load_model(loan.loan_onnx()))
    train_private(model, split, CONFIG, DP_SGD, noise, accountant, lambda line: None)
    return model, split.standardizer


def step_loss(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return loss_function(CONFIG.loss, "mean")(model(x), targets(y, CONFIG.loss))


def test_the_continued_run_starts_from_exactly_the_previous_model_and_training_moves_it(previous_run):
    model, standardizer = previous_run
    previous_digest = model_state.digest(model, standardizer)
    saved = model_state.save(model, standardizer)
    assert model_state.save(model, standardizer) == saved  # deterministic bytes
    state = model_state.load(saved)
    assert state.digest == previous_digest and model_state.starting_point(state) == {
        "previous_model_sha256": previous_digest}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), state.model.parameters(), strict=True))
    assert all(p.requires_grad for p in state.model.parameters())
    model_state.check_fits(state, onnx_to_torch(load_model(loan.loan_onnx())), LOW, HIGH)

    # version 2 arrives
    table, noise, accountant = loan_version(3000, seed=2), SecureRandom(bytes([2]) * 32), Accountant()
    split = split_with_standardizer(table, loan.FEATURE_COLUMNS, loan.TARGET, SPLIT, noise, state.standardizer)
    assert accountant.releases == []  # scaled by the previous run's constants: no statistics released
    for x, y in ((split.train_x, split.train_y), (split.val_x, split.val_y)):
        assert torch.equal(step_loss(state.model, x, y), step_loss(model, x, y))  # step 0: the same model
    # ... and the model the TDC received (standardization folded in) scores the raw rows the same
    delivered = onnxruntime.InferenceSession(export_onnx(with_standardization(model, standardizer),
                                                         len(loan.FEATURE_COLUMNS)))
    (scored,) = delivered.run(None, {delivered.get_inputs()[0].name: split.val_raw_x})
    with torch.no_grad():
        assert np.allclose(scored, state.model(split.val_x).numpy(), rtol=1e-4, atol=1e-4)

    train_private(state.model, split, CONFIG, DP_SGD, noise, accountant, lambda line: None)
    assert model_state.digest(state.model, state.standardizer) != previous_digest  # training moved the weights
    assert model_state.digest(model, standardizer) == previous_digest               # the previous model is intact
    assert not torch.equal(step_loss(state.model, split.val_x, split.val_y), step_loss(model, split.val_x, split.val_y))


def test_a_state_that_does_not_fit_the_contracts_model_or_bounds_is_refused(previous_run):
    state = model_state.load(model_state.save(*previous_run))
    wider = torch.nn.Sequential(torch.nn.Linear(loan.N_FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    with pytest.raises(model_state.ModelStateError, match="layers differ from the contract's model"):
        model_state.check_fits(state, wider, LOW, HIGH)
    other_high = HIGH.copy()
    other_high[1] = 1_000_000  # an income bound other than the config's
    with pytest.raises(model_state.ModelStateError, match="other feature bounds"):
        model_state.check_fits(state, onnx_to_torch(load_model(loan.loan_onnx())), LOW, other_high)


def _rezipped(saved: bytes, **members: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(saved)) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents.update(members)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_malformed_state_is_refused_with_a_clear_error(previous_run):
    saved = model_state.save(*previous_run)
    constants = json.loads(zipfile.ZipFile(io.BytesIO(saved)).read("standardizer.json"))
    zero_scale = {**constants, "scale": [0.0] * loan.N_FEATURES}
    for data, reason in ((b"not a zip", "a model state is a zip archive"),
                         (_rezipped(saved, **{"run.py": b"print('hi')"}), "holds exactly model.onnx and"),
                         (_rezipped(saved, **{"model.onnx": b"junk"}), "model.onnx: not a valid ONNX model"),
                         (_rezipped(saved, **{"standardizer.json": json.dumps(zero_scale).encode()}), "scale > 0"),
                         (_rezipped(saved, **{"standardizer.json": b"{\"low\": [1]}"}), "one number per feature")):
        with pytest.raises(model_state.ModelStateError, match=reason):
            model_state.load(data)
