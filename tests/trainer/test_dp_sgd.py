"""Our DP-SGD step must do exactly what Opacus does (clipping, noise, scaling, accounting)."""
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from torch import nn

from local_emulator.covid_reference import covid_mlp
from trainer_container.dp_sgd import PrivacyPlan, PrivateStep

PLAN = PrivacyPlan(target_epsilon=1.0, delta=1e-5, noise_multiplier=0.9, max_grad_norm=0.7, sample_rate=0.05,
                   steps_per_epoch=20, epochs=1, expected_batch_size=32)


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
                       PLAN, noise_seed=noise_seed)
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


def test_accountant_matches_opacus_rdp_for_the_same_steps():
    x, y = _batch(2)
    _, step = _our_step(x, y, noise_seed=0, steps=4)
    reference = RDPAccountant()
    for _ in range(4):
        reference.step(noise_multiplier=PLAN.noise_multiplier, sample_rate=PLAN.sample_rate)
    assert step.epsilon() == reference.get_epsilon(delta=PLAN.delta) > 0


def test_empty_batch_takes_a_pure_noise_step():
    empty_x, empty_y = torch.zeros(0, 10), torch.zeros(0, 1)
    ours, step = _our_step(empty_x, empty_y, noise_seed=3)
    start = [p.detach() for p in covid_mlp(seed=1).parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(ours, start))
    assert step.accountant.history == [(PLAN.noise_multiplier, PLAN.sample_rate, 1)]
