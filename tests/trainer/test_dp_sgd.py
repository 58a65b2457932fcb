"""Our DP-SGD step must do exactly what Opacus does (clipping, scaling; noise of the same
distribution from the secure source), and the plan must fit every mechanism of the run, DP-SGD
included, into the target epsilon of the one accountant."""
import math

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from local_emulator.covid_reference import covid_mlp
from trainer_container.accountant import GaussianRelease, pld_epsilon, rdp_epsilon
from trainer_container.dp_sgd import PrivacyBudgetError, PrivacyPlan, PrivateStep
from trainer_container.privacy_plan import (EPSILON_TOLERANCE, FIXED_SHARE, MIN_VALIDATION_ROWS, RunPrivacy,
                                            fixed_noise, gaussian_delta, gaussian_noise_for, plan_dp_sgd)
from trainer_container.join import JoinError
from trainer_container.secure_random import SecureRandom

PLAN = PrivacyPlan(noise_multiplier=0.9, max_grad_norm=0.7, sample_rate=0.05, steps_per_epoch=20, epochs=1,
                   expected_batch_size=32)


def _batch(seed=0, n=29):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g) * 3  # large inputs: most samples get clipped
    return x, (torch.rand(n, 1, generator=g) > 0.5).float()


def _opacus_step(x, y, steps=1):
    model = GradSampleModule(covid_mlp(seed=1))
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0,
                            max_grad_norm=PLAN.max_grad_norm, expected_batch_size=PLAN.expected_batch_size)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.BCEWithLogitsLoss()(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _our_step(x, y, plan=PLAN, steps=1, key=bytes(32)):
    model = covid_mlp(seed=1)
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.BCEWithLogitsLoss(reduction="sum"),
                       plan, SecureRandom(key))
    for _ in range(steps):
        step(x, y)
    return [p.detach().clone() for p in model.parameters()], step


def test_private_step_matches_opacus_clipping_and_scaling():
    x, y = _batch()
    noiseless = PrivacyPlan(0.0, PLAN.max_grad_norm, PLAN.sample_rate, 20, 1, PLAN.expected_batch_size)
    ours, _ = _our_step(x, y, noiseless, steps=3)
    reference = _opacus_step(x, y, steps=3)
    start = [p.detach() for p in covid_mlp(seed=1).parameters()]
    for mine, theirs, before in zip(ours, reference, start):
        assert not torch.equal(mine, before)
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_step_noise_has_opacus_distribution_and_comes_from_the_secure_source():
    """An empty Poisson batch is a pure-noise step: the gradient is N(0, (sigma C / B)^2) in
    every coordinate, as Opacus's; another key gives other noise, torch's generator is untouched."""
    torch_state = torch.random.get_rng_state()
    _, step = _our_step(torch.zeros(0, 10), torch.zeros(0, 1))
    noise = step.flat_grad.numpy().astype(np.float64)
    expected = PLAN.noise_multiplier * PLAN.max_grad_norm / PLAN.expected_batch_size
    n = len(noise)
    assert abs(noise.mean()) < 5 * expected / math.sqrt(n)
    assert abs(noise.var() / expected ** 2 - 1) < 5 * math.sqrt(2 / n)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    _, other = _our_step(torch.zeros(0, 10), torch.zeros(0, 1), key=b"\x01" * 32)
    assert not torch.equal(step.flat_grad, other.flat_grad)
    _, same = _our_step(torch.zeros(0, 10), torch.zeros(0, 1))
    assert torch.equal(step.flat_grad, same.flat_grad)


@pytest.mark.parametrize("rows, batch_size, epochs, target, delta", [
    (1695, 64, 5, 1.5, 1e-5),  # the COVID reference
    (200_000, 256, 2, 3.0, 1e-6),
])
def test_plan_fits_every_mechanism_into_the_target(rows, batch_size, epochs, target, delta):
    fixed = fixed_noise(target, delta, roc_auc=True, loss=True)
    plan = plan_dp_sgd(rows, batch_size, epochs, target, delta, 1.0, fixed.releases())
    assert plan.steps_per_epoch == math.ceil(rows / batch_size) and plan.sample_rate == 1 / plan.steps_per_epoch
    total = pld_epsilon(fixed.releases() + [plan.release()], delta)
    assert target - EPSILON_TOLERANCE <= total <= target
    assert pld_epsilon(fixed.releases(), delta) == pytest.approx(FIXED_SHARE * target, abs=0.02)
    assert rdp_epsilon(fixed.releases() + [plan.release()], delta) > total  # PLD is the tighter bound


def test_fixed_noise_is_solved_exactly_for_the_composed_gaussian():
    sigma = gaussian_noise_for(1.0, 1e-5)
    assert gaussian_delta(1.0, sigma) == pytest.approx(1e-5, rel=1e-6)
    assert pld_epsilon([GaussianRelease("g", sigma)], 1e-5) == pytest.approx(1.0, abs=0.01)  # another method
    fixed = fixed_noise(1.5, 1e-5, roc_auc=False, loss=False)
    composed = 1 / math.sqrt(sum(1 / r.noise_multiplier ** 2 for r in fixed.releases()))
    assert composed == pytest.approx(gaussian_noise_for(FIXED_SHARE * 1.5, 1e-5))
    # asking for more metrics makes every fixed mechanism noisier at the same epsilon
    assert fixed_noise(1.5, 1e-5, roc_auc=True, loss=True).confusion > fixed.confusion


def test_a_hopeless_target_is_refused_from_constants_alone():
    with pytest.raises(PrivacyBudgetError, match="epsilon 0.0001 is too small to release even the row count"):
        RunPrivacy.before_data(1e-4, 1e-5, 0.2, 100, roc_auc=False, loss=False)
    with pytest.raises(PrivacyBudgetError, match="does not leave DP-SGD any budget"):
        plan_dp_sgd(1695, 64, 5, 0.5, 1e-5, 1.0, fixed_noise(0.6, 1e-5, False, False).releases())


def test_size_checks_use_the_noisy_count_with_constant_messages():
    plan = RunPrivacy.before_data(1.5, 1e-5, 0.2, 2120, roc_auc=False, loss=False)
    messages = set()
    for noisy in (2119.9, 2000.0, 40.0, -3.0):
        with pytest.raises(JoinError) as refused:
            plan.check_size(noisy)
        messages.add(str(refused.value))
    assert messages == {"the join has fewer rows than the contract's minimum (2120)"}
    plan.check_size(2120.0)  # the decision is the noisy count's, whatever n is
    small = RunPrivacy.before_data(1.5, 1e-5, 0.1, 10, roc_auc=False, loss=False)
    with pytest.raises(JoinError, match=f"validation set of at least {MIN_VALIDATION_ROWS} rows"):
        small.check_size(MIN_VALIDATION_ROWS / 0.1 - 0.5)  # a one-row validation set cannot happen


def test_parameters_depend_on_the_noisy_count_only():
    plan = RunPrivacy.before_data(1.5, 1e-5, 0.2, 100, roc_auc=False, loss=False)
    a, b = plan.after_count(2119.0, 64, 5, 1.0), plan.after_count(2119.0, 64, 5, 1.0)
    assert a == b  # a function of (constants, noisy count): n itself is never an input
    loose = RunPrivacy.before_data(1.5, 1e-2, 0.2, 100, roc_auc=False, loss=False).after_count(2119.0, 64, 5, 1.0)
    assert loose.delta == pytest.approx(1 / (2119 * 0.8))  # capped at 1 / the estimated training rows
    assert loose.noise.count == RunPrivacy.before_data(1.5, 1e-2, 0.2, 100, False, False).noise.count
    assert loose.noise.statistics >= RunPrivacy.before_data(1.5, 1e-2, 0.2, 100, False, False).noise.statistics
