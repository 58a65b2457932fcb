"""Throughput of plain torch training vs our DP-SGD on the COVID MLP (10 -> 128 -> 64 -> 1),
200,000 synthetic rows, batch sizes 64 and 256, one thread. DP-SGD runs as the trainer runs it:
Poisson batches and Gaussian noise (sum of four Box-Muller samples) from the secure source
(AES-256-CTR keyed from os.urandom), its noise multiplier searched with the PLD accountant.
Throughput is rows per second of this process's CPU time, and each figure the best of REPEATS
epochs with plain and DP interleaved, so other processes sharing the machine distort the ratio
less.
Last line: one JSON object with samples/s per mode and batch size and the DP/plain ratio."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed
from shared.pipeline import TrainingConfig
from local_emulator.covid_reference import N_FEATURES, covid_mlp, covid_training_config
from trainer_container.dp_sgd import PrivateStep
from trainer_container.privacy_plan import fixed_noise, plan_dp_sgd
from trainer_container.secure_random import SecureRandom
from trainer_container.training import (loss_function, make_optimizer, private_epoch,
                                        train_non_private_epoch)

ROWS = 200_000
BATCH_SIZES = (64, 256)
REPEATS = 3


def synthetic_rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, N_FEATURES, generator=g)
    y = ((x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(ROWS, generator=g)) > 0).float()[:, None]
    return x, y


def plain_samples_per_second(x, y, batch_size: int) -> float:
    config = TrainingConfig.from_dict(covid_training_config(batch_size=batch_size))
    model = covid_mlp()
    optimizer, loss = make_optimizer(config, model), loss_function(config.loss, "mean")
    generator = torch.Generator().manual_seed(0)
    train_non_private_epoch(model, optimizer, loss, x[:20_000], y[:20_000], batch_size, generator)  # warm-up
    start = time.process_time()
    train_non_private_epoch(model, optimizer, loss, x, y, batch_size, generator)
    return len(x) / (time.process_time() - start)


def private_samples_per_second(x, y, batch_size: int) -> float:
    config = TrainingConfig.from_dict(covid_training_config(batch_size=batch_size))
    model = covid_mlp()
    plan = plan_dp_sgd(len(x), batch_size, 1, 1.5, 1e-6, 1.0, fixed_noise(1.5, 1e-6, False, False).releases())
    optimizer, loss = make_optimizer(config, model), loss_function(config.loss, "sum")
    noise = SecureRandom()
    step = PrivateStep(model, optimizer, loss, plan, noise)
    for _ in range(50):  # warm-up
        step(x[:batch_size], y[:batch_size])
    start = time.process_time()
    seen = private_epoch(step, x, y, noise)
    return seen / (time.process_time() - start)


def main() -> None:
    torch.set_num_threads(1)
    x, y = synthetic_rows()
    result = {"rows": ROWS, "threads": 1, "best_of": REPEATS, "clock": "process_cpu_time"}
    for batch_size in BATCH_SIZES:
        plain, private = 0.0, 0.0
        for _ in range(REPEATS):
            plain = max(plain, plain_samples_per_second(x, y, batch_size))
            private = max(private, private_samples_per_second(x, y, batch_size))
        ratio = private / plain
        print(f"batch {batch_size}: plain {plain:,.0f} samples/s, DP-SGD {private:,.0f} samples/s, ratio {ratio:.2f}")
        result[f"batch_{batch_size}"] = {"plain_samples_per_s": round(plain), "dp_samples_per_s": round(private),
                                         "dp_to_plain_ratio": round(ratio, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
