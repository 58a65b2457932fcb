"""The trainer's one source of secret randomness: every DP mechanism's Gaussian noise, the
Poisson sampling of DP-SGD batches and the train/validation split come from here, never from
torch's or numpy's Mersenne Twister (predictable from its outputs, and seeded from values an
adversary may know).

Source: an AES-256-CTR keystream (`cryptography`, AES-NI) under a key drawn from the operating
system's CSPRNG (`os.urandom`) when the run starts; the key never leaves the process. A test
may pass its own key to make a run reproducible; the trainer never does.

Gaussians: Box-Muller on uniforms built from the keystream (float64 for the mechanisms on
statistics, counts and metrics; float32, the gradients' own precision, for DP-SGD), and, as
Opacus's secure mode
does against floating-point attacks on the noise's low-order bits (Mironov 2012), every released
sample is the sum of four independent samples divided by two: the same N(0, std^2), with no
single Box-Muller output's rounding pattern exposed.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32
SUMMED_SAMPLES = 4  # as opacus.optimizers.optimizer._generate_noise with secure_mode=True


def open_unit_uniform(words: torch.Tensor) -> torch.Tensor:
    """int32 words -> float64 uniforms in the open interval (0, 1), (w + 2^31 + 0.5) / 2^32,
    exact in float64. Never in float32: there the sum rounds, and the 65 words nearest -2^31
    gave exactly 0, so log(0) and an infinite noise sample that turned a DP-SGD step, hence the
    whole model, into NaN (about one run in 25; seen as an export that "does not reproduce")."""
    return words.to(torch.float64).add_(2.0 ** 31 + 0.5).mul_(2.0 ** -32)


def box_muller(uniform: torch.Tensor, angle_uniform: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2n N(0, 1) samples of `dtype` from n pairs of float64 uniforms in (0, 1): radius
    sqrt(-2 ln u) times the cosine, then the sine, of 2 pi a. Computed in float64 and rounded
    once, so every sample is finite."""
    radius = uniform.log().mul_(-2.0).sqrt_()
    angle = angle_uniform.mul(2 * math.pi)
    return torch.cat([torch.cos(angle).mul_(radius), torch.sin(angle).mul_(radius)]).to(dtype)


class SecureRandom:
    """Uniforms, Gaussians, Bernoulli draws and Poisson-sampled batches from AES-256-CTR."""

    def __init__(self, key: bytes | None = None):
        key = os.urandom(KEY_BYTES) if key is None else key
        if len(key) != KEY_BYTES:
            raise ValueError("the key must be 32 bytes")
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = bytes(0)
        self._out = bytearray(0)

    def _bytes(self, count: int) -> memoryview:
        """The next `count` bytes of keystream, in a buffer reused across calls (no page faults
        from fresh large allocations on every DP-SGD step)."""
        if len(self._zeros) < count:
            self._zeros = bytes(count)
            self._out = bytearray(count + 15)
        self._stream.update_into(memoryview(self._zeros)[:count], self._out)
        return memoryview(self._out)[:count]

    def words64(self, count: int) -> np.ndarray:
        return np.frombuffer(self._bytes(8 * count), dtype=np.uint64).copy()

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in the open interval (0, 1), 53 random bits each."""
        return ((self.words64(count) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def _standard_normal(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """`count` Box-Muller N(0, 1) samples (an even number is drawn, the surplus dropped).
        float64: a 53-bit uniform for the radius (|z| up to 8.6) and 32 bits for the angle;
        float32 (DP-SGD's gradients): 32 bits for each (|z| up to 6.8 per sample, 13.5 for the
        sum of four: a tail beyond any DP-SGD run's reach)."""
        pairs = (count + 1) // 2
        if dtype == torch.float64:
            stream = self._bytes(12 * pairs)
            words = torch.frombuffer(stream, dtype=torch.int64, count=pairs)
            angle_words = torch.frombuffer(stream, dtype=torch.int32, count=pairs, offset=8 * pairs)
            # (w >>> 11 + 0.5) / 2^53 in (0, 1): the mask makes the shift logical
            uniform = ((words >> 11) & ((1 << 53) - 1)).to(torch.float64).add_(0.5).mul_(2.0 ** -53)
        else:
            stream = self._bytes(8 * pairs)
            uniform = open_unit_uniform(torch.frombuffer(stream, dtype=torch.int32, count=pairs))
            angle_words = torch.frombuffer(stream, dtype=torch.int32, count=pairs, offset=4 * pairs)
        return box_muller(uniform, open_unit_uniform(angle_words), dtype)[:count]

    def normal(self, shape: int | tuple[int, ...], std: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """N(0, std^2) samples of `shape`, each the sum of SUMMED_SAMPLES Box-Muller draws
        scaled back to variance std^2 (as Opacus's secure mode)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = math.prod(shape)
        draws = self._standard_normal(SUMMED_SAMPLES * count, dtype).view(SUMMED_SAMPLES, count)
        return draws.sum(0).mul_(std / math.sqrt(SUMMED_SAMPLES)).view(shape)

    def bernoulli(self, count: int, p: float) -> np.ndarray:
        """`count` independent booleans, each True with probability p."""
        return self.uniform(count) < p

    def poisson_batch(self, n: int, sample_rate: float) -> np.ndarray:
        """Indices of a Poisson-sampled batch (each of n rows kept with probability
        sample_rate), drawn as geometric gaps between kept rows: O(batch) per step, not O(n)."""
        if sample_rate >= 1.0:
            return np.arange(n)
        expected = n * sample_rate
        chunk = int(expected + 6 * math.sqrt(expected) + 16)
        log_keep = math.log1p(-sample_rate)
        positions = np.empty(0, dtype=np.int64)
        last = -1
        while last < n:
            gaps = np.floor(np.log(self.uniform(chunk)) / log_keep).astype(np.int64) + 1  # Geometric(sample_rate)
            positions = np.concatenate([positions, last + np.cumsum(gaps)])
            last = int(positions[-1])
        return positions[positions < n]
