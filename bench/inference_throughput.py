"""Rows per second of confidential batch inference's data plane (trainer_container/inference.py:
decrypt, read, check, predict, write, encrypt) beside plain onnxruntime on the same rows in the
same run (read the CSV file with pandas, predict, write the CSV file: no crypto, no checks).
Goal (issue 15): the data plane at >= 0.8 of plain.

The rows are the loan scenario's (local_emulator/loan_data.py: the bank's customers with a bureau
file, categories coded as configs/loan/*.json code them, the bank's loan id as row id); the model
is the scenario's 11 -> 32 -> 1 MLP (local_emulator/loan_reference.py, a logit out). Both sides
run `--repeat` times, interleaved so machine load hits both alike; the best time of each gives
the ratio (the median ratio is printed beside it). Breakdown runs time each step of both (best
of `--repeat` per step).
Last line: one JSON object."""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from local_emulator import loan_data  # noqa: E402
from local_emulator.loan_reference import FEATURE_COLUMNS, loan_join_spec, loan_onnx, loan_training_config  # noqa: E402
from shared import package  # noqa: E402
from shared.pipeline import JoinSpec, TrainingConfig  # noqa: E402
from trainer_container import inference  # noqa: E402

KEY = os.urandom(32)
THRESHOLD = 0.5


def write_batch(path: Path, rows: int, seed: int) -> None:
    """The requester's prepared batch: row_id and the features, `rows` rows, block by block."""
    codes, written = loan_data.category_codes(), 0
    with open(path, "w", newline="", encoding="utf-8") as out:
        for block in loan_data.blocks(rows * 2, seed):  # about 85% of the customers have a bureau file
            joined = block.joined.head(rows - written)
            table = pd.DataFrame({"row_id": [f"LN{i:010d}" for i in range(written, written + len(joined))],
                                  **{c: joined[c].map(codes[c]) if c in codes else joined[c] for c in FEATURE_COLUMNS}})
            table.to_csv(out, index=False, header=written == 0, lineterminator="\n")
            written += len(joined)
            if written == rows:
                return
    raise SystemExit(f"only {written} rows generated")


def plain(model: bytes, csv_path: Path, out_path: Path) -> dict:
    """What a plain scorer does: read the CSV, one onnxruntime call, write the CSV."""
    times, start = {}, time.perf_counter()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    table = pd.read_csv(csv_path, dtype={"row_id": object})
    features = table[list(FEATURE_COLUMNS)].to_numpy(np.float32)
    times["read_s"] = time.perf_counter() - start
    (logits,) = session.run(None, {session.get_inputs()[0].name: features})
    probabilities = inference.probability(logits, "logit")
    times["predict_s"] = time.perf_counter() - start - times["read_s"]
    out_path.write_bytes(inference.predictions_csv(table["row_id"].to_numpy(), probabilities, THRESHOLD))
    times["total_s"] = time.perf_counter() - start
    times["write_s"] = times["total_s"] - times["read_s"] - times["predict_s"]
    return times


def confidential(model: bytes, spec: inference.InferenceSpec, batch: Path, out_path: Path) -> dict:
    start = time.perf_counter()
    with open(batch, "rb") as src:
        inference.run_inference(model, spec, src, KEY, out_path, KEY, "requester-output")
    return {"total_s": time.perf_counter() - start}


def confidential_steps(model: bytes, spec: inference.InferenceSpec, batch: Path, out_path: Path) -> dict:
    """The data plane's steps one by one (what run_inference chains)."""
    times, mark = {}, time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        times[name] = now - mark
        mark = now
    predictor = inference.Predictor(model, spec)
    step("model_s")
    with open(batch, "rb") as src:
        ids, features = inference.read_batch(spec, src, KEY)
    step("decrypt_read_check_s")
    probabilities = predictor.probabilities(features)
    step("predict_s")
    text = inference.predictions_csv(ids, probabilities, spec.threshold)
    step("write_csv_s")
    inference._write_encrypted(text, out_path, KEY, "requester-output")
    step("encrypt_s")
    return times


def decrypt_only(batch: Path) -> float:
    start = time.perf_counter()
    with open(batch, "rb") as src:
        package.decrypt_stream(src, _Discard(), KEY)
    return time.perf_counter() - start


class _Discard:
    def write(self, view) -> int:
        return len(view)


def best_steps(runs: list[dict]) -> dict:
    """Each step's best time over the runs (the load on this shared machine only ever adds)."""
    return {name: min(run[name] for run in runs) for name in runs[0]}


def rounded(times: dict) -> dict:
    return {name: round(value, 3) for name, value in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="batch rows (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    model = loan_onnx()
    spec = inference.InferenceSpec.from_terms(JoinSpec.from_dict(loan_join_spec()),
                                              TrainingConfig.from_dict(loan_training_config()),
                                              {"threshold": THRESHOLD, "max_rows": args.rows})
    with tempfile.TemporaryDirectory(prefix="ccr-bench-inference-") as scratch:
        folder = Path(scratch)
        csv_path, batch = folder / "batch.csv", folder / "batch.ccr"
        began = time.perf_counter()
        write_batch(csv_path, args.rows, args.seed)
        package.encrypt_file(csv_path, batch, KEY, "requester-batch", "text/csv", None)
        csv_bytes = csv_path.stat().st_size
        print(f"{args.rows:,} rows, {csv_bytes / 1e6:.0f} MB of CSV, generated and encrypted in "
              f"{time.perf_counter() - began:.0f} s", flush=True)
        plain_runs, ours_runs = [], []
        for run in range(args.repeat):
            plain_runs.append(plain(model, csv_path, folder / "plain.csv"))
            ours_runs.append(confidential(model, spec, batch, folder / "predictions.ccr"))
            print(f"  run {run + 1}: plain {plain_runs[-1]['total_s']:.2f} s, "
                  f"data plane {ours_runs[-1]['total_s']:.2f} s", flush=True)
        decrypted = io.BytesIO()
        with open(folder / "predictions.ccr", "rb") as src:
            package.decrypt_stream(src, decrypted, KEY)
        same_output = decrypted.getvalue() == (folder / "plain.csv").read_bytes()
        steps = best_steps([confidential_steps(model, spec, batch, folder / f"steps{i}.ccr") for i in range(args.repeat)])
        plain_steps = best_steps([plain(model, csv_path, folder / "plain.csv") for _ in range(args.repeat)])
        decrypt_s = min(decrypt_only(batch) for _ in range(args.repeat))
    plain_best, ours_best = min(r["total_s"] for r in plain_runs), min(r["total_s"] for r in ours_runs)
    ratio = plain_best / ours_best
    median_ratio = statistics.median(p["total_s"] / o["total_s"] for p, o in zip(plain_runs, ours_runs))
    figures = {
        "rows": args.rows, "csv_bytes": csv_bytes, "repeat": args.repeat,
        "plain_rows_per_s": round(args.rows / plain_best), "data_plane_rows_per_s": round(args.rows / ours_best),
        "ratio": round(ratio, 3), "median_ratio": round(median_ratio, 3), "goal_ratio": 0.8,
        "same_output_bytes": same_output,
        "data_plane_steps": rounded(steps), "plain_steps": rounded(plain_steps),
        "decrypt_alone_s": round(decrypt_s, 3),
        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    print(f"plain onnxruntime (read CSV, predict, write CSV): {figures['plain_rows_per_s']:,} rows/s")
    print(f"data plane (decrypt, read, check, predict, write, encrypt): {figures['data_plane_rows_per_s']:,} rows/s")
    print(f"ratio {figures['ratio']} (median of pairs {figures['median_ratio']}; goal >= 0.8); "
          f"outputs byte-identical: {same_output}")
    print(f"data plane steps (s): {figures['data_plane_steps']}")
    print(f"plain steps (s): {figures['plain_steps']}; decrypting alone {figures['decrypt_alone_s']} s")
    print(f"load average {figures['load_average_1m']} on {figures['cpus']} CPUs")
    print(json.dumps({"benchmark": "inference_throughput", **figures}))


if __name__ == "__main__":
    main()
