"""The counting-query attack on the validation metrics, closed: the TDC sets feature_bounds as
threshold indicators (age >= a, labcode >= c), hand-sets its model's weights to predict positive
exactly for people past both thresholds, and a learning rate of 1e-9 so training leaves them;
exact confusion counts would then be a counting query isolating one person and releasing their
test result. The released counts carry Gaussian noise whose spread, over many draws, is the
one the accountant charges."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from local_emulator import covid_reference as covid_model
from shared.pipeline import TrainingConfig
from trainer_container.accountant import Accountant
from trainer_container.dp_evaluation import (auc_from_histograms, confusion_matrix, evaluate_private,
                                             metrics_from_confusion, score_histograms)
from trainer_container.features import split_and_scale
from trainer_container.join import join_datasets
from trainer_container.noisy_count import noisy_count
from trainer_container.privacy_plan import RunPrivacy
from trainer_container.secure_random import SecureRandom
from trainer_container.training import predictions, train_private

DRAWS = 600


@pytest.fixture(scope="module")
def attack(covid_spec, covid_paths):
    """The attack run up to the evaluation: (model, split, config, plan, exact confusion)."""
    table = join_datasets(covid_spec, covid_paths)
    features = covid_spec.feature_columns
    age_at, lab_at = features.index("age"), features.index("labcode")
    # The test (not the attacker, who cannot) replays the secure source to find who validates,
    # and aims the query at the oldest validating person with the highest lab code.
    replay = SecureRandom(bytes(32))
    replay.normal(1, 1.0)  # the noisy count's draw
    validating = table[replay.bernoulli(len(table), 0.2)]
    top_age = int(validating["age"].max())
    top_lab = int(validating.loc[validating["age"] == top_age, "labcode"].max())
    bounds = {**covid_model.FEATURE_BOUNDS, "age": [top_age - 1, top_age], "labcode": [top_lab - 1, top_lab]}
    config = TrainingConfig.from_dict(covid_model.covid_training_config(
        learning_rate=1e-9, epochs=1, optimizer="sgd", feature_bounds=bounds))
    noise, accountant = SecureRandom(bytes(32)), Accountant()
    privacy = RunPrivacy.before_data(config.epsilon, 1e-5, 0.2, 100, roc_auc=False, loss=False)
    privacy = privacy.after_count(noisy_count(len(table), privacy.noise.count, noise, accountant), config.batch_size,
                                  config.epochs, config.max_grad_norm)
    split = split_and_scale(table, features, covid_spec.target, 0.2, config.feature_bounds, noise,
                            privacy.noise.statistics, accountant)
    # indicator s = (z - z_low) / (z_high - z_low) in {0, 1} for each threshold; logit 20 (s_age + s_lab - 1.5)
    standardizer = split.standardizer
    z_low = (np.array([top_age - 1, top_lab - 1]) - standardizer.mean[[age_at, lab_at]]) / \
        standardizer.scale[[age_at, lab_at]]
    z_high = (np.array([top_age, top_lab]) - standardizer.mean[[age_at, lab_at]]) / \
        standardizer.scale[[age_at, lab_at]]
    model = nn.Sequential(nn.Linear(10, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, age_at] = 1 / (z_high[0] - z_low[0])
        model[0].weight[1, lab_at] = 1 / (z_high[1] - z_low[1])
        model[0].bias.copy_(torch.tensor(-z_low / (z_high - z_low), dtype=torch.float32))
        model[2].weight.fill_(20.0)
        model[2].bias.fill_(-30.0)
    train_private(model, split, config, privacy.dp_sgd, noise, accountant, lambda line: None)
    with torch.no_grad():
        predicted, _ = predictions(model(split.val_x), config.loss)
    exact = confusion_matrix(split.val_y.numpy(), predicted, 2)
    return model, split, config, privacy, exact


def test_the_attack_isolates_few_people(attack):
    *_, exact = attack
    assert 1 <= exact[:, 1].sum() <= 3  # predicted positive: the people past both thresholds


def test_released_counts_spread_as_the_accountant_charges(attack):
    model, split, config, privacy, exact = attack
    released, charged = [], set()
    for draw in range(DRAWS):
        accountant = Accountant()
        evaluation = evaluate_private(model, split.val_x, split.val_y, config, privacy.noise,
                                      SecureRandom(draw.to_bytes(32, "big")), accountant)
        [release] = accountant.releases
        charged.add((release.mechanism, release.noise_multiplier, release.sample_rate, release.steps))
        released.append(np.array(evaluation["metrics"]["confusion_matrix"]))
    [(mechanism, sigma, rate, steps)] = charged
    assert (mechanism, rate, steps) == ("confusion_counts", 1.0, 1) and sigma == privacy.noise.confusion
    residuals = (np.array(released) - exact).reshape(DRAWS, -1)  # sensitivity 1: noise std = sigma
    for cell in residuals.T:
        assert abs(cell.mean()) < 4.5 * sigma / math.sqrt(DRAWS)
        statistic = (DRAWS - 1) * cell.var(ddof=1) / sigma ** 2  # chi-square with DRAWS - 1 degrees
        assert stats.chi2.ppf(0.0005, DRAWS - 1) < statistic < stats.chi2.ppf(0.9995, DRAWS - 1)
    # The isolated person's result: telling "positive" from "negative" by the released cell is
    # close to a coin flip (a threshold halfway between the neighbours' exact counts).
    cell = exact[1, 1]
    right = np.mean(np.concatenate([residuals[:, 3] + cell >= cell - 0.5, residuals[:, 3] + cell - 1 < cell - 0.5]))
    assert right < 0.5 + stats.norm.cdf(0.5 / sigma) - 0.5 + 0.05


def test_metrics_are_post_processing_of_the_noisy_counts():
    noisy = np.array([[300.4, 9.6], [-2.0, 100.0]])  # a negative noisy cell counts as 0
    metrics = metrics_from_confusion(noisy)
    assert metrics["accuracy"] == pytest.approx(400.4 / 410.0)
    assert metrics["precision"] == pytest.approx(100 / 109.6) and metrics["recall"] == 1.0
    histogram = score_histograms(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.9]))
    assert auc_from_histograms(histogram) == 1.0
    assert auc_from_histograms(score_histograms(np.array([0, 1]), np.array([0.5, 0.5]))) == 0.5
