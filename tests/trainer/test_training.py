import numpy as np
import onnxruntime
import pytest
import torch

from shared.pipeline import TrainingConfig
from local_emulator import covid_reference as covid_model
from trainer_container.accountant import Accountant
from trainer_container.dp_evaluation import evaluate_private
from trainer_container.export import ExportError, export_onnx, verify_onnx, with_standardization
from trainer_container.features import Standardizer, split_and_scale
from trainer_container.join import join_datasets
from trainer_container.noisy_count import noisy_count
from trainer_container.onnx_convert import load_model, onnx_to_torch
from trainer_container.privacy_plan import RunPrivacy
from trainer_container.secure_random import SecureRandom
from trainer_container.training import TrainingSetupError, check_model_fits, predictions, train_private


@pytest.fixture(scope="module")
def covid_table(covid_spec, covid_paths):
    return join_datasets(covid_spec, covid_paths)


BOUNDS = covid_model.covid_training_config()["feature_bounds"]
VALIDATION_SPLIT = 0.2  # a contract term (evaluation.validation_split), not the TDC's


def _train(table, spec, key=bytes(32), **overrides):
    """Trains and evaluates as the run does, the secure source keyed with `key` (the run draws it
    from the OS)."""
    config = TrainingConfig.from_dict(covid_model.covid_training_config(**overrides))
    noise, accountant = SecureRandom(key), Accountant()
    privacy = RunPrivacy.before_data(config.epsilon, 1e-5, VALIDATION_SPLIT, 100, roc_auc="roc_auc" in config.metrics,
                                     loss="loss" in config.metrics)
    privacy = privacy.after_count(noisy_count(len(table), privacy.noise.count, noise, accountant), config.batch_size,
                                  config.epochs, config.max_grad_norm)
    split = split_and_scale(table, spec.feature_columns, spec.target, VALIDATION_SPLIT, config.feature_bounds, noise,
                            privacy.noise.statistics, accountant)
    model = onnx_to_torch(load_model(covid_model.covid_onnx()))
    lines = []
    train_private(model, split, config, privacy.dp_sgd, noise, accountant, lines.append)
    evaluation = evaluate_private(model, split.val_x, split.val_y, config, privacy.noise, noise, accountant)
    privacy.check_charged(accountant)
    return model, split, evaluation, accountant.epsilon(privacy.delta), lines


def exact_accuracy(model, split) -> float:
    with torch.no_grad():
        predicted, _ = predictions(model(split.val_x), "bce_with_logits")
    return float((predicted == split.val_y.numpy()).mean())


def test_covid_dp_training_reaches_the_reference_accuracy_within_budget(covid_table, covid_spec):
    model, split, evaluation, epsilon, lines = _train(covid_table, covid_spec)
    assert 1.49 <= epsilon <= 1.5  # the total of every mechanism: count, statistics, DP-SGD, evaluation
    assert exact_accuracy(model, split) >= 0.85
    metrics = evaluation["metrics"]
    assert set(metrics) == {"accuracy", "precision", "recall", "f1", "confusion_matrix"}
    assert abs(metrics["accuracy"] - exact_accuracy(model, split)) <= 0.03
    assert lines == [f"epoch {e}/5 done" for e in range(1, 6)]  # no value of any epoch leaves

    exported = with_standardization(model, split.standardizer)
    onnx_bytes = export_onnx(exported, 10)
    verify_onnx(onnx_bytes, exported, split.val_raw_x)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 7, 300):  # dynamic batch axis
        assert session.run(None, {"features": split.val_raw_x[:batch]})[0].shape == (batch, 1)


def test_training_is_deterministic_given_the_seed_and_the_key(covid_table, covid_spec):
    first = _train(covid_table, covid_spec, epochs=1)
    second = _train(covid_table, covid_spec, epochs=1)
    other_key = _train(covid_table, covid_spec, epochs=1, key=b"\x01" * 32)
    weights = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights(first[0]), weights(second[0]))
    assert first[2] == second[2]
    assert np.array_equal(first[1].standardizer.scale, second[1].standardizer.scale)
    assert not torch.equal(weights(first[0]), weights(other_key[0]))
    assert not np.array_equal(first[1].standardizer.scale, other_key[1].standardizer.scale)
    assert len(first[1].val_y) != len(other_key[1].val_y) or not torch.equal(first[1].val_y, other_key[1].val_y)


def test_the_split_is_secret_and_row_by_row(covid_table, covid_spec):
    """Each row validates with probability p from the secure source: sizes vary between keys
    (the split's sizes are private too), around p * n."""
    sizes = []
    for key in range(20):
        split = split_and_scale(covid_table, covid_spec.feature_columns, covid_spec.target, VALIDATION_SPLIT, BOUNDS,
                                SecureRandom(bytes([key]) * 32), 10.0, Accountant())
        sizes.append(len(split.val_y))
        assert len(split.val_y) + len(split.train_y) == len(covid_table)
    n = len(covid_table)
    assert len(set(sizes)) > 5
    assert abs(np.mean(sizes) - VALIDATION_SPLIT * n) < 4 * np.sqrt(n * 0.16 / 20)


def test_scaling_is_fitted_on_the_training_split_only(covid_table, covid_spec):
    split = split_and_scale(covid_table, covid_spec.feature_columns, covid_spec.target, VALIDATION_SPLIT, BOUNDS,
                            SecureRandom(bytes(32)), 10.0, Accountant())
    assert torch.allclose(split.train_x.mean(0), torch.zeros(10), atol=0.5)  # standardized, up to the DP noise
    standardized_raw = split.standardizer.apply(split.val_raw_x)
    assert np.allclose(standardized_raw, split.val_x.numpy())


def test_export_verification_fails_with_a_count_free_message(covid_table, covid_spec):
    split = split_and_scale(covid_table, covid_spec.feature_columns, covid_spec.target, VALIDATION_SPLIT, BOUNDS,
                            SecureRandom(bytes(32)), 10.0, Accountant())
    model = with_standardization(onnx_to_torch(load_model(covid_model.covid_onnx())), split.standardizer)
    onnx_bytes = export_onnx(model, 10)
    with torch.no_grad():
        model[1][0].bias.add_(0.01)
    with pytest.raises(ExportError) as failed:
        verify_onnx(onnx_bytes, model, split.val_raw_x)
    assert str(failed.value) == "exported ONNX does not reproduce the torch model within 0.0001 on the validation rows"


def test_export_verification_holds_for_large_logits(covid_table, covid_spec):
    """A correct export whose logits are in the thousands passes (float32 rounds there at ~1e-4,
    so an absolute bound alone refused correct models at random), and a changed bias still fails."""
    split = split_and_scale(covid_table, covid_spec.feature_columns, covid_spec.target, VALIDATION_SPLIT, BOUNDS,
                            SecureRandom(bytes(32)), 10.0, Accountant())
    model = with_standardization(onnx_to_torch(load_model(covid_model.covid_onnx())), split.standardizer)
    with torch.no_grad():
        for parameter in model[1].parameters():
            parameter.mul_(3000.0)
        assert model(torch.from_numpy(split.val_raw_x.astype(np.float32))).abs().max() > 1000
    onnx_bytes = export_onnx(model, 10)
    verify_onnx(onnx_bytes, model, split.val_raw_x)
    with torch.no_grad():
        model[1][0].bias.add_(1.0)
    with pytest.raises(ExportError):
        verify_onnx(onnx_bytes, model, split.val_raw_x)


def test_non_label_targets_are_refused_before_training(covid_table, covid_spec):
    table = covid_table.copy()
    table[covid_spec.target] = table[covid_spec.target] * 3.5
    with pytest.raises(TrainingSetupError, match="class labels 0..1"):
        _train(table, covid_spec, epochs=1)


def test_model_with_the_wrong_input_width_is_refused():
    model = onnx_to_torch(load_model(covid_model.covid_onnx()))
    with pytest.raises(TrainingSetupError, match="expects 10 features, the join selects 9"):
        check_model_fits(model, "bce_with_logits", 9)
    with pytest.raises(TrainingSetupError, match="cross_entropy needs"):
        check_model_fits(model, "cross_entropy", 10)


def test_standardizer_charges_its_mechanism(covid_table, covid_spec):
    accountant = Accountant()
    x = covid_table.loc[:, list(covid_spec.feature_columns)].to_numpy(dtype=np.float64)
    low, high = (np.array([BOUNDS[c][i] for c in covid_spec.feature_columns], dtype=np.float64) for i in (0, 1))
    Standardizer.fit_private(x, low, high, SecureRandom(bytes(32)), 12.0, accountant)
    assert [(r.mechanism, r.noise_multiplier) for r in accountant.releases] == [("scaling_statistics", 12.0)]
