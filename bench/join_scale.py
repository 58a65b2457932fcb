"""Cost of the trainer's join at scale, from encrypted packages: three synthetic prepared tables
shaped like the COVID providers' (the columns configs/covid/*.json produce, the 64-hex-digit
HMAC pseudonym of a phone number from shared/deid.py as join key, integer feature columns, the
label in icmr's) are encrypted with shared/package.py (outside the timed part, and the
plaintext CSVs deleted), then joined with the COVID join spec two ways, each in a child process
that reports its own time, CPU seconds (the machine may be shared) and peak RSS (ru_maxrss):

    before  each package decrypted to a plaintext file (package.decrypt_file), then the pandas
            join the trainer used until now (bench/pandas_join.py)
    after   the trainer's join (trainer_container/join.py, DuckDB) reading each package as it
            decrypts into a pipe (trainer_container/plaintext_pipe.py): no plaintext file

Every table holds the `rows` shared keys, each table in its own order, plus 1% keys of its own
that the inner join must drop, so exactly `rows` rows come out. Tables are streamed to disk
a chunk at a time in a temporary directory, deleted after each size (with --keep DIR the
packages and their throwaway key stay in DIR and later runs with it reuse them). The smaller size
(--small, 1 M) runs first. Issue 15's target: 10 M joined rows in under 20 s and 2 GB.
`--after-only` skips the old join (which takes minutes and 4+ GB at 10 M rows).
Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from shared import deid, package  # noqa: E402
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


def worker(way: str) -> None:
    """Runs in a child process: one way's join of the packages named on stdin, then its
    timing, shape and own peak RSS as JSON."""
    from functools import partial
    from shared.pipeline import JoinSpec
    job = json.loads(sys.stdin.read())
    spec, key = JoinSpec.from_dict(job["spec"]), bytes.fromhex(job["key"])
    packages = {name: Path(path) for name, path in job["packages"].items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start, cpu_before = time.perf_counter(), usage.ru_utime + usage.ru_stime
    if way == "before":
        from bench.pandas_join import join_datasets as pandas_join
        with tempfile.TemporaryDirectory(prefix="ccr-bench-plain-") as plain:
            paths = {name: Path(plain) / f"{name}.csv" for name in packages}
            for name, encrypted in packages.items():
                package.decrypt_file(encrypted, paths[name], key)
            table = pandas_join(spec, paths)
    else:
        from trainer_container.join import join_datasets
        from trainer_container.plaintext_pipe import decrypted_pipe
        table = join_datasets(spec, {name: partial(decrypted_pipe, path, key) for name, path in packages.items()})
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"rows": len(table), "columns": list(table.columns), "seconds": seconds,
                      "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
                      "dtypes": sorted({str(t) for t in table.dtypes}),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))  # Linux: KiB


def run_join(way: str, packages: dict[str, Path], key: bytes) -> dict:
    job = json.dumps({"spec": covid_join_spec(DEID_JOIN_KEYS), "key": key.hex(),
                      "packages": {name: str(path) for name, path in packages.items()}})
    output = subprocess.run([sys.executable, __file__, "--worker", way], input=job, check=True,
                            stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def encrypt(paths: dict[str, Path], key: bytes) -> dict[str, Path]:
    """Each table as a package under `key`; the plaintext CSVs are deleted."""
    packages = {}
    for name, path in paths.items():
        packages[name] = path.with_suffix(".ccr")
        package.encrypt_file(path, packages[name], key, "bench-data-key", "text/csv")
        path.unlink()
    return packages


def prepared(folder: Path, rows: int) -> tuple[dict[str, Path], bytes, dict]:
    """The three packages of `rows` joined rows and their key, generated into `folder`, or
    reused from it when an earlier run with --keep left them there (the key beside them)."""
    job = folder / "packages.json"
    if job.exists():
        kept = json.loads(job.read_text())
        print(f"{rows:,} joined rows: reusing the packages kept in {folder}", flush=True)
        packages = {name: Path(path) for name, path in kept["packages"].items()}
        return packages, bytes.fromhex(kept["key"]), {"csv_bytes": _plaintext_bytes(packages)}
    print(f"{rows:,} joined rows: generating three tables of {rows + round(rows * UNMATCHED):,} rows", flush=True)
    paths, generate_s = generate(folder, rows)
    key = os.urandom(package.KEY_SIZE)
    packages = encrypt(paths, key)
    figures = {"csv_bytes": _plaintext_bytes(packages), "generate_s": round(generate_s, 1)}
    print(f"  encrypted {figures['csv_bytes'] / 1e9:.2f} GB of CSV into three packages", flush=True)
    job.write_text(json.dumps({"packages": {name: str(path) for name, path in packages.items()}, "key": key.hex()}))
    return packages, key, figures


def _plaintext_bytes(packages: dict[str, Path]) -> int:
    """The CSV bytes the packages hold, as their manifests say."""
    total = 0
    for path in packages.values():
        with open(path, "rb") as stream:
            total += package.read_header(stream).manifest.size
    return total


def measure(rows: int, ways: list[str], keep: Path | None = None) -> dict:
    expected = [c for columns in FEATURES.values() for c in columns]
    figures = {"rows_joined": rows}
    if keep is not None:
        (keep / f"rows_{rows}").mkdir(parents=True, exist_ok=True)
    with (nullcontext(keep / f"rows_{rows}") if keep is not None
          else tempfile.TemporaryDirectory(prefix="ccr-bench-join-")) as scratch:
        packages, key, made = prepared(Path(scratch), rows)
        figures.update(made)
        for way in ways:
            joined = run_join(way, packages, key)
            if joined["rows"] != rows or joined["columns"] != expected or joined["dtypes"] != ["float32"]:
                raise SystemExit(f"{way}: join returned {joined['rows']} rows, columns {joined['columns']}, "
                                 f"types {joined['dtypes']}; expected {rows} rows, columns {expected}, float32")
            figures[way] = {"join_s": round(joined["seconds"], 1), "join_cpu_s": round(joined["cpu_s"], 1),
                            "join_rows_per_s": round(rows / joined["seconds"]),
                            "join_peak_rss_mb": round(joined["peak_rss_mb"], 1)}
            print(f"  {way:>6}: joined {rows:,} rows in {figures[way]['join_s']} s, {figures[way]['join_cpu_s']} CPU s "
                  f"({figures[way]['join_rows_per_s']:,} rows/s), peak RSS {figures[way]['join_peak_rss_mb']:,.0f} MB",
                  flush=True)
    if "before" in figures:
        figures["speedup"] = round(figures["before"]["join_s"] / figures["after"]["join_s"], 1)
        figures["memory_ratio"] = round(figures["before"]["join_peak_rss_mb"] / figures["after"]["join_peak_rss_mb"], 1)
        print(f"  before/after: time x{figures['speedup']}, peak memory x{figures['memory_ratio']}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="joined rows (default 10,000,000)")
    parser.add_argument("--small", type=int, default=1_000_000, help="smaller size run first (default 1,000,000)")
    parser.add_argument("--after-only", action="store_true", help="skip the old pandas join")
    parser.add_argument("--keep", type=Path, help="keep the generated packages (and their throwaway key) in this "
                                                  "folder and reuse them on the next run with it")
    args = parser.parse_args()
    ways = ["after"] if args.after_only else ["before", "after"]
    sizes = sorted({min(args.small, args.rows), args.rows})
    results = {f"rows_{n}": measure(n, ways, args.keep) for n in sizes}
    large = results[f"rows_{sizes[-1]}"]["after"]
    target = {"join_s_under": 20, "peak_rss_mb_under": 2048, "rows": sizes[-1],
              "met": large["join_s"] < 20 and large["join_peak_rss_mb"] < 2048}
    print(f"after, {sizes[-1]:,} rows: {large['join_s']} s, {large['join_peak_rss_mb']:,.0f} MB "
          f"(target < 20 s and < 2 GB: {'met' if target['met'] else 'NOT met'}); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(json.dumps({"benchmark": "join_scale", **results, "target": target, "cpus": os.cpu_count(),
                      "load_average_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        main()
