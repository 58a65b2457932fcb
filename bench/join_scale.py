"""Cost of the trainer's join at scale: three synthetic prepared tables shaped like the COVID
providers' (the columns configs/covid/*.json produce, the 64-hex-digit HMAC pseudonym of a
phone number from shared/deid.py as join key, integer feature columns, the label in icmr's)
are joined by trainer_container/join.py with the COVID join spec, in a child process so its
ru_maxrss (RUSAGE_CHILDREN) is the join's peak memory.

Every table holds the `rows` shared keys, each table in its own order, plus 1% keys of its own
that the inner join must drop, so exactly `rows` rows come out. Tables are streamed to disk
a chunk at a time in a temporary directory, deleted after each size. The smaller size
(--small, 1 M) runs first in the same run so cost growth is visible (and so the running
maximum RUSAGE_CHILDREN reports is each child's own peak). Issue requirement: 10 million
joined rows within the machine's memory. Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from shared import deid  # noqa: E402
from local_emulator.covid_reference import DEID_JOIN_KEYS, FEATURES, covid_join_spec  # noqa: E402

CHUNK_ROWS = 1_000_000
UNMATCHED = 0.01  # share of extra keys, per table, that no other table holds
RANGES = {"a_test_ct_value": (10, 40), "a_sample_genetic_strain": (0, 6), "age": (18, 100),  # [low, high)
          "vaccine_name": (0, 3), "labcode": (1, 500), "page": (0, 100)}  # anything else: 0 or 1


def table_columns() -> dict[str, list[str]]:
    """Each provider's prepared header (join key first), from its configs/covid preparation config."""
    return {name: deid.load_config(ROOT / "configs" / "covid" / f"{name}.json").output_columns for name in FEATURES}


def generate(folder: Path, rows: int, seed: int = 0) -> tuple[dict[str, Path], float]:
    """Writes the three tables chunk by chunk; each shared key is computed once for all three."""
    secret, rng = bytes.fromhex(deid.new_pseudonym_key()), np.random.default_rng(seed)
    headers = table_columns()
    paths = {name: folder / f"{name}.csv" for name in headers}
    began, done = time.perf_counter(), 0
    files = {name: open(path, "w", newline="", encoding="utf-8") for name, path in paths.items()}
    try:
        while done < rows:
            size = min(CHUNK_ROWS, rows - done)
            shared = [deid.pseudonym(secret, str(6_000_000_000 + done + i), "phone") for i in range(size)]
            for number, (name, header) in enumerate(headers.items()):
                extra = round(size * UNMATCHED)
                first_own = 7_000_000_000 + number * 500_000_000 + round(done * UNMATCHED)
                keys = np.array(shared + [deid.pseudonym(secret, str(first_own + i), "phone") for i in range(extra)],
                                dtype=object)[rng.permutation(size + extra)]
                table = {header[0]: keys}
                for column in header[1:]:
                    low, high = RANGES.get(column, (0, 2))
                    table[column] = rng.integers(low, high, size + extra)
                pd.DataFrame(table, columns=header).to_csv(files[name], header=done == 0, index=False)
            done += size
            elapsed = time.perf_counter() - began
            print(f"  generated {done:>12,} / {rows:,} rows per table ({elapsed:.0f} s)", flush=True)
    finally:
        for handle in files.values():
            handle.close()
    return paths, time.perf_counter() - began


def worker() -> None:
    """Runs in a child process: the trainer's join of the tables named on stdin, then its
    timing and shape as JSON (the parent reads the child's peak RSS itself)."""
    from shared.pipeline import JoinSpec
    from trainer_container.join import join_datasets
    job = json.loads(sys.stdin.read())
    spec = JoinSpec.from_dict(job["spec"])
    start = time.perf_counter()
    table = join_datasets(spec, {name: Path(path) for name, path in job["paths"].items()})
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": len(table), "columns": list(table.columns), "seconds": seconds}))


def run_join(paths: dict[str, Path]) -> dict:
    job = json.dumps({"spec": covid_join_spec(DEID_JOIN_KEYS),
                      "paths": {name: str(path) for name, path in paths.items()}})
    output = subprocess.run([sys.executable, __file__, "--worker"], input=job, check=True,
                            stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    return result


def measure(rows: int) -> dict:
    print(f"{rows:,} joined rows: generating three tables of {rows + round(rows * UNMATCHED):,} rows", flush=True)
    with tempfile.TemporaryDirectory(prefix="ccr-bench-join-") as scratch:
        paths, generate_s = generate(Path(scratch), rows)
        table_bytes = sum(path.stat().st_size for path in paths.values())
        print(f"  joining {table_bytes / 1e9:.2f} GB of CSV in a child process", flush=True)
        joined = run_join(paths)
    expected = [c for columns in FEATURES.values() for c in columns]
    if joined["rows"] != rows or joined["columns"] != expected:
        raise SystemExit(f"join returned {joined['rows']} rows, columns {joined['columns']}; "
                         f"expected {rows} rows, columns {expected}")
    figures = {"rows_joined": rows, "csv_bytes": table_bytes, "generate_s": round(generate_s, 1),
               "join_s": round(joined["seconds"], 1), "join_rows_per_s": round(rows / joined["seconds"]),
               "join_peak_rss_mb": round(joined["peak_rss_mb"], 1)}
    print(f"  joined {rows:,} rows in {figures['join_s']} s ({figures['join_rows_per_s']:,} rows/s), "
          f"peak RSS {figures['join_peak_rss_mb']:,.0f} MB; generating took {figures['generate_s']} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="joined rows (default 10,000,000)")
    parser.add_argument("--small", type=int, default=1_000_000, help="smaller size run first (default 1,000,000)")
    args = parser.parse_args()
    sizes = sorted({min(args.small, args.rows), args.rows})  # ascending: RUSAGE_CHILDREN is a running maximum
    results = {f"rows_{n}": measure(n) for n in sizes}
    small, large = results[f"rows_{sizes[0]}"], results[f"rows_{sizes[-1]}"]
    growth = {"rows_ratio": sizes[-1] / sizes[0], "join_time_ratio": round(large["join_s"] / small["join_s"], 2),
              "peak_rss_ratio": round(large["join_peak_rss_mb"] / small["join_peak_rss_mb"], 2)}
    print(f"x{growth['rows_ratio']:g} rows: join time x{growth['join_time_ratio']}, "
          f"peak RSS x{growth['peak_rss_ratio']}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(json.dumps({"benchmark": "join_scale", **results, "growth": growth, "cpus": os.cpu_count(),
                      "load_average_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
