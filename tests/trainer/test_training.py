import numpy as np
import onnxruntime
import pytest
import torch

from shared.pipeline import TrainingConfig
from local_emulator import covid_reference as covid_model
from trainer_container.dp_sgd import STATISTICS_NOISE_MULTIPLIER, noise_generator, plan_privacy, poisson_batch
from trainer_container.export import ExportError, export_onnx, verify_onnx, with_standardization
from trainer_container.features import Standardizer, split_and_scale
from trainer_container.join import join_datasets
from trainer_container.onnx_convert import load_model, onnx_to_torch
from trainer_container.training import TrainingSetupError, check_model_fits, train_private


@pytest.fixture(scope="module")
def covid_table(covid_spec, covid_paths):
    return join_datasets(covid_spec, covid_paths)


BOUNDS = covid_model.covid_training_config()["feature_bounds"]
VALIDATION_SPLIT = 0.2  # a contract term (evaluation.validation_split), not the TDC's


def _split(table, spec, noise_seed=0):
    return split_and_scale(table, spec.feature_columns, spec.target, VALIDATION_SPLIT, 7, BOUNDS,
                           noise_generator(noise_seed), STATISTICS_NOISE_MULTIPLIER)


def _train(table, spec, epsilon=1.5, noise_seed=0, **overrides):
    """Trains as the run does, with the DP noise seeded by `noise_seed` (the run draws it secretly)."""
    config = TrainingConfig.from_dict(covid_model.covid_training_config(epsilon=epsilon, **overrides))
    noise = noise_generator(noise_seed)
    split = split_and_scale(table, spec.feature_columns, spec.target, VALIDATION_SPLIT, config.seed,
                            config.feature_bounds, noise, STATISTICS_NOISE_MULTIPLIER)
    plan = plan_privacy(len(split.train_x), config.batch_size, config.epochs, config.epsilon, 1e-5,
                        config.max_grad_norm, STATISTICS_NOISE_MULTIPLIER)
    model = onnx_to_torch(load_model(covid_model.covid_onnx()))
    lines = []
    return model, split, train_private(model, split, config, plan, noise, lines.append), lines


def test_covid_dp_training_reaches_the_reference_accuracy_within_budget(covid_table, covid_spec):
    model, split, result, lines = _train(covid_table, covid_spec)
    assert (len(split.train_x), len(split.val_x)) == (1695, 424)
    assert 1.49 <= result.privacy["epsilon"] <= 1.5  # the total: feature statistics + DP-SGD
    assert result.privacy["steps"] == 5 * 27 and result.privacy["accountant"] == "rdp"
    assert result.privacy["feature_scaling"]["noise_multiplier"] == 6.0
    assert any("validation metrics" in item for item in result.privacy["outside_epsilon"])  # said, not hidden
    assert result.metrics["accuracy"] >= 0.85
    assert set(result.metrics) == {"loss", "accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"}
    assert np.sum(result.metrics["confusion_matrix"]) == 424
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3, 4, 5]
    epsilons = [e["epsilon"] for e in result.epochs]
    assert epsilons == sorted(epsilons) and len(lines) == 5 and "epsilon" in lines[0]
    # the loss shown per epoch is the held-out split's (the final one is the reported metric),
    # never an exact aggregate of the training rows DP-SGD protects
    assert all(set(e) == {"epoch", "validation_loss", "epsilon"} for e in result.epochs)
    assert result.epochs[-1]["validation_loss"] == result.metrics["loss"]
    assert f"validation loss {result.metrics['loss']:.4f}" in lines[-1]

    exported = with_standardization(model, split.standardizer)
    onnx_bytes = export_onnx(exported, 10)
    assert verify_onnx(onnx_bytes, exported, split.val_raw_x) <= 1e-4
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 7, 424):  # dynamic batch axis
        assert session.run(None, {"features": split.val_raw_x[:batch]})[0].shape == (batch, 1)


def test_training_is_deterministic_given_the_seeds(covid_table, covid_spec):
    first = _train(covid_table, covid_spec, epochs=1)
    second = _train(covid_table, covid_spec, epochs=1)
    other_seed = _train(covid_table, covid_spec, epochs=1, seed=8)
    other_noise = _train(covid_table, covid_spec, epochs=1, noise_seed=1)
    weights = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights(first[0]), weights(second[0]))
    assert first[2].metrics == second[2].metrics
    assert np.array_equal(first[1].standardizer.scale, second[1].standardizer.scale)
    assert not torch.equal(weights(first[0]), weights(other_seed[0]))
    assert not torch.equal(weights(first[0]), weights(other_noise[0]))
    assert not np.array_equal(first[1].standardizer.scale, other_noise[1].standardizer.scale)


def test_scaling_is_fitted_on_the_training_split_only(covid_table, covid_spec):
    split = _split(covid_table, covid_spec)
    rows = covid_table.loc[:, list(covid_spec.feature_columns)].to_numpy(dtype=np.float64)
    train_rows = rows[np.random.default_rng(7).permutation(len(rows))[424:]]
    low, high = (np.array([BOUNDS[c][i] for c in covid_spec.feature_columns], dtype=np.float64) for i in (0, 1))
    on_train = Standardizer.fit_private(train_rows, low, high, noise_generator(0), STATISTICS_NOISE_MULTIPLIER)
    on_all = Standardizer.fit_private(rows, low, high, noise_generator(0), STATISTICS_NOISE_MULTIPLIER)
    assert np.array_equal(split.standardizer.mean, on_train.mean)
    assert np.array_equal(split.standardizer.scale, on_train.scale)
    assert not np.allclose(split.standardizer.mean, on_all.mean)
    assert torch.allclose(split.train_x.mean(0), torch.zeros(10), atol=0.5)  # standardized, up to the DP noise


def test_poisson_batches_have_the_expected_size_and_no_duplicates():
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(400):
        batch = poisson_batch(10_000, 0.01, rng)
        assert len(np.unique(batch)) == len(batch) and batch.min(initial=0) >= 0 and batch.max(initial=0) < 10_000
        sizes.append(len(batch))
    assert 95 < np.mean(sizes) < 105 and 8 < np.std(sizes) < 12  # Binomial(10000, 0.01)


def test_noise_multiplier_grows_as_the_budget_shrinks():
    loose = plan_privacy(1695, 64, 5, 3.0, 1e-5, 1.0, STATISTICS_NOISE_MULTIPLIER)
    tight = plan_privacy(1695, 64, 5, 0.9, 1e-5, 1.0, STATISTICS_NOISE_MULTIPLIER)
    assert tight.noise_multiplier > loose.noise_multiplier > 0
    assert plan_privacy(100, 10, 1, 1.0, 0.5, 1.0, STATISTICS_NOISE_MULTIPLIER).delta == 0.01  # capped at 1/N


def test_export_verification_fails_when_outputs_differ(covid_table, covid_spec):
    split = _split(covid_table, covid_spec)
    model = with_standardization(onnx_to_torch(load_model(covid_model.covid_onnx())), split.standardizer)
    onnx_bytes = export_onnx(model, 10)
    with torch.no_grad():
        model[1][0].bias.add_(0.01)
    with pytest.raises(ExportError, match="differs from torch"):
        verify_onnx(onnx_bytes, model, split.val_raw_x)


def test_non_label_targets_are_refused_before_training(covid_table, covid_spec):
    table = covid_table.copy()
    table[covid_spec.target] = table[covid_spec.target] * 3.5
    with pytest.raises(TrainingSetupError, match="class labels 0..1"):
        _train(table, covid_spec)


def test_model_with_the_wrong_input_width_is_refused():
    model = onnx_to_torch(load_model(covid_model.covid_onnx()))
    with pytest.raises(TrainingSetupError, match="expects 10 features, the join selects 9"):
        check_model_fits(model, "bce_with_logits", 9)
    with pytest.raises(TrainingSetupError, match="cross_entropy needs"):
        check_model_fits(model, "cross_entropy", 10)
