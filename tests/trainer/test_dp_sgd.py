"""Our DP-SGD step must do exactly what Opacus does (clipping, noise, scaling, accounting), and
the plan must charge the feature statistics to the same budget."""
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from torch import nn

from local_emulator.covid_reference import covid_mlp
from trainer_container.dp_sgd import (EPSILON_TOLERANCE, STATISTICS_NOISE_MULTIPLIER, PrivacyBudgetError, PrivacyPlan,
                                      PrivateStep, noise_generator, plan_privacy, statistics_epsilon,
                                      statistics_noise_multiplier, total_epsilon)

PLAN = PrivacyPlan(target_epsilon=1.0, delta=1e-5, noise_multiplier=0.9, max_grad_norm=0.7, sample_rate=0.05,
                   steps_per_epoch=20, epochs=1, expected_batch_size=32, statistics_noise_multiplier=6.0)


def _batch(seed=0, n=29):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g) * 3  # large inputs: most samples get clipped
    return x, (torch.rand(n, 1, generator=g) > 0.5).float()


def _opacus_step(x, y, noise_seed, steps=1):
    model = GradSampleModule(covid_mlp(seed=1))
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=PLAN.noise_multiplier,
                            max_grad_norm=PLAN.max_grad_norm, expected_batch_size=PLAN.expected_batch_size,
                            generator=torch.Generator().manual_seed(noise_seed))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.BCEWithLogitsLoss()(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _our_step(x, y, noise_seed, steps=1):
    model = covid_mlp(seed=1)
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.BCEWithLogitsLoss(reduction="sum"),
                       PLAN, noise_generator(noise_seed))
    for _ in range(steps):
        step(x, y)
    return [p.detach().clone() for p in model.parameters()], step


def test_private_step_matches_opacus_clipping_noise_and_scaling():
    x, y = _batch()
    ours, _ = _our_step(x, y, noise_seed=5, steps=3)
    reference = _opacus_step(x, y, noise_seed=5, steps=3)
    start = [p.detach() for p in covid_mlp(seed=1).parameters()]
    for mine, theirs, before in zip(ours, reference, start):
        assert not torch.equal(mine, before)
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_noise_depends_on_the_seed():
    x, y = _batch(1)
    assert not torch.allclose(_our_step(x, y, 5)[0][0], _our_step(x, y, 6)[0][0])


def test_accountant_matches_opacus_rdp_for_the_statistics_and_the_same_steps():
    x, y = _batch(2)
    _, step = _our_step(x, y, noise_seed=0, steps=4)
    reference = RDPAccountant()
    reference.step(noise_multiplier=PLAN.statistics_noise_multiplier, sample_rate=1.0)
    for _ in range(4):
        reference.step(noise_multiplier=PLAN.noise_multiplier, sample_rate=PLAN.sample_rate)
    assert step.epsilon() == reference.get_epsilon(delta=PLAN.delta) > 0


def test_empty_batch_takes_a_pure_noise_step():
    empty_x, empty_y = torch.zeros(0, 10), torch.zeros(0, 1)
    ours, step = _our_step(empty_x, empty_y, noise_seed=3)
    start = [p.detach() for p in covid_mlp(seed=1).parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(ours, start))
    assert step.accountant.history == [(PLAN.statistics_noise_multiplier, 1.0, 1),  # charged at the start
                                       (PLAN.noise_multiplier, PLAN.sample_rate, 1)]


@pytest.mark.parametrize("n_train, batch_size, epochs, target, delta", [
    (1695, 64, 5, 1.5, 1e-5),  # the COVID reference
    (1695, 8, 5, 1.5, 1e-5),
    (200_000, 256, 2, 3.0, 1e-6),
])
def test_plan_charges_the_statistics_and_meets_the_total_target(n_train, batch_size, epochs, target, delta):
    plan = plan_privacy(n_train, batch_size, epochs, target, delta, 1.0, STATISTICS_NOISE_MULTIPLIER)
    sgd_only = get_noise_multiplier(target_epsilon=target, target_delta=plan.delta, sample_rate=plan.sample_rate,
                                    steps=plan.steps, accountant="rdp")
    assert plan.statistics_noise_multiplier == STATISTICS_NOISE_MULTIPLIER
    assert plan.noise_multiplier > sgd_only  # the statistics cost something
    accountant = RDPAccountant()  # composed independently of the plan's own helpers
    accountant.step(noise_multiplier=STATISTICS_NOISE_MULTIPLIER, sample_rate=1.0)
    for _ in range(plan.steps):
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    total = accountant.get_epsilon(delta=plan.delta)
    assert total == total_epsilon(plan)
    assert target - EPSILON_TOLERANCE <= total <= target
    without_statistics = RDPAccountant()
    without_statistics.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps))
    assert without_statistics.get_epsilon(delta=plan.delta) < total - 0.05  # the step is really composed in


def test_covid_statistics_cost_a_small_part_of_the_budget():
    """At the COVID settings the statistics leave DP-SGD about 90% of epsilon 1.5."""
    plan = plan_privacy(1695, 64, 5, 1.5, 1e-5, 1.0, STATISTICS_NOISE_MULTIPLIER)
    sgd_only = RDPAccountant()
    sgd_only.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps))
    assert 0.8 * 1.5 < sgd_only.get_epsilon(delta=plan.delta) < 0.95 * 1.5
    assert 1.0 < plan.noise_multiplier / get_noise_multiplier(
        target_epsilon=1.5, target_delta=1e-5, sample_rate=plan.sample_rate, steps=plan.steps, accountant="rdp") < 1.15


def test_a_small_target_gets_noisier_statistics_and_a_hopeless_one_is_refused():
    assert statistics_noise_multiplier(1.5, 1e-5) == STATISTICS_NOISE_MULTIPLIER  # COVID: the floor suffices
    noise = statistics_noise_multiplier(0.5, 1e-5)  # the floor alone would spend 0.65
    assert noise > STATISTICS_NOISE_MULTIPLIER and statistics_epsilon(noise, 1e-5) <= 0.25
    assert statistics_epsilon(noise / 2, 1e-5) > 0.25  # the smallest doubling that fits
    plan = plan_privacy(1695, 64, 5, 0.5, 1e-5, 1.0, noise)
    assert plan.statistics_noise_multiplier == noise and 0.5 - EPSILON_TOLERANCE <= total_epsilon(plan) <= 0.5
    with pytest.raises(PrivacyBudgetError, match="epsilon 0.5 does not cover the feature scaling statistics"):
        plan_privacy(1695, 64, 5, 0.5, 1e-5, 1.0, STATISTICS_NOISE_MULTIPLIER)  # with the floor's noise it cannot
    strict = plan_privacy(1695, 64, 5, 0.3, 1e-5, 1.0, statistics_noise_multiplier(0.3, 1e-5))
    assert 0.3 - EPSILON_TOLERANCE <= total_epsilon(strict) <= 0.3  # beyond what Opacus's orders certify
    with pytest.raises(PrivacyBudgetError, match="epsilon 0.0001 is too small to release even the feature"):
        statistics_noise_multiplier(1e-4, 1e-5)
    with pytest.raises(PrivacyBudgetError, match="epsilon 0.01 does not cover the feature scaling statistics"):
        statistics_noise_multiplier(0.01, 1e-5)  # within the search's tolerance: refused before any data
