"""The secure source every DP mechanism draws from: Gaussian moments, Poisson batches and the
Bernoulli split have the distributions the accountant assumes, the stream is the key's alone,
and torch's (Mersenne Twister) generator is never touched."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from trainer_container.accountant import Accountant
from trainer_container.dp_evaluation import release_confusion
from trainer_container.noisy_count import noisy_count
from trainer_container.secure_random import SUMMED_SAMPLES, SecureRandom, box_muller, open_unit_uniform

N = 400_000


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaussian_moments(dtype):
    z = SecureRandom(b"\x07" * 32).normal(N, 2.5, dtype).double().numpy() / 2.5
    assert z.dtype == np.float64 and len(z) == N
    se = 1 / math.sqrt(N)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(stats.skew(z)) < 5 * math.sqrt(6) * se
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24) * se  # excess kurtosis 0
    assert stats.kstest(z[:50_000], "norm").pvalue > 1e-4
    assert (np.abs(z) > 4).mean() == pytest.approx(2 * stats.norm.sf(4), rel=0.5)  # the tails are there


def test_every_sample_sums_several_draws():
    """Opacus's secure mode against floating-point attacks: a released value is the sum of
    four Box-Muller draws (scaled back), not one draw's lattice point."""
    assert SUMMED_SAMPLES == 4
    source = SecureRandom(b"\x01" * 32)
    draws = SecureRandom(b"\x01" * 32)._standard_normal(SUMMED_SAMPLES * 10, torch.float64).view(SUMMED_SAMPLES, 10)
    assert torch.allclose(source.normal(10, 3.0), draws.sum(0) * 3.0 / 2)


def test_every_keystream_word_gives_a_finite_sample_within_the_documented_tail():
    """The bug this stops: the float32 uniform was computed in float32, where the 65 int32 words
    nearest -2^31 rounded to exactly 0; log(0) gave an infinite DP-SGD noise sample and a NaN
    model in about one COVID run in 25 (found as 1 of 10 concurrent runs failing its export)."""
    edges = torch.tensor([-2 ** 31 + i for i in range(300)] + [2 ** 31 - 1 - i for i in range(300)] + [-1, 0],
                         dtype=torch.int64).to(torch.int32)
    uniform = open_unit_uniform(edges)
    assert uniform.dtype == torch.float64 and 0 < float(uniform.min()) and float(uniform.max()) < 1
    assert len(set(uniform[:300].tolist())) == 300          # no two words share a value: nothing rounded
    for dtype in (torch.float32, torch.float64):
        z = box_muller(uniform, open_unit_uniform(edges.flip(0)), dtype)
        assert z.dtype == dtype and bool(torch.isfinite(z).all())
        assert float(z.abs().max()) <= math.sqrt(-2 * math.log(2.0 ** -33)) + 1e-5   # 6.76: the smallest uniform's


class _StuckKeystream(SecureRandom):
    """A keystream of the one worst word, 0x80000000 (-2^31 as int32), over and over."""

    def _bytes(self, count: int) -> memoryview:
        return memoryview(bytearray(b"\x00\x00\x00\x80" * (count // 4)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_worst_keystream_gives_finite_noise(dtype):
    noise = _StuckKeystream(bytes(32)).normal(1000, 1.0, dtype)
    assert noise.dtype == dtype and bool(torch.isfinite(noise).all())


def test_the_stream_is_the_keys_and_a_fresh_key_by_default():
    assert torch.equal(SecureRandom(bytes(32)).normal(100, 1.0), SecureRandom(bytes(32)).normal(100, 1.0))
    assert not torch.equal(SecureRandom(bytes(32)).normal(100, 1.0), SecureRandom(b"\x01" * 32).normal(100, 1.0))
    assert not torch.equal(SecureRandom().normal(100, 1.0), SecureRandom().normal(100, 1.0))  # os.urandom keys
    with pytest.raises(ValueError):
        SecureRandom(b"short")


def test_no_mechanism_uses_torchs_or_numpys_default_generator(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch's generator used for noise")
    for name in ("normal", "randn", "rand", "randint", "randperm", "bernoulli"):
        monkeypatch.setattr(torch, name, refuse)
    monkeypatch.setattr(np.random, "default_rng", refuse)
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    source, accountant = SecureRandom(), Accountant()
    noisy_count(100, 20.0, source, accountant)
    release_confusion(np.eye(2) * 50, 3.0, source, accountant)
    source.poisson_batch(10_000, 0.01)
    source.bernoulli(1000, 0.2)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_poisson_batches_have_the_binomial_size_and_no_duplicates():
    source, sizes = SecureRandom(b"\x02" * 32), []
    for _ in range(400):
        batch = source.poisson_batch(10_000, 0.01)
        assert len(np.unique(batch)) == len(batch) and batch.min(initial=0) >= 0 and batch.max(initial=0) < 10_000
        sizes.append(len(batch))
    assert 98 < np.mean(sizes) < 102 and 9 < np.std(sizes) < 11  # Binomial(10000, 0.01): 100 +- 9.95
    counts = np.bincount(np.concatenate([source.poisson_batch(1000, 0.1) for _ in range(2000)]), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-4  # every row equally likely


def test_bernoulli_rate():
    draws = SecureRandom(b"\x03" * 32).bernoulli(N, 0.2)
    assert abs(draws.mean() - 0.2) < 5 * math.sqrt(0.16 / N)
