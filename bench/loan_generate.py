"""Speed and memory of the loan scenario's synthetic data generator (local_emulator/loan_data.py):
both providers' raw CSV exports for --rows bank customers (default 1 M) written to a temporary
directory, timed in wall-clock and CPU seconds (the load of a shared machine disturbs CPU time
less), with the process's peak RSS before and after (the generator holds one block of
loan_data.BLOCK_ROWS rows at a time, so the peak should not grow with --rows). Last line: one
JSON object."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from local_emulator import loan_data  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as folder:
        bank, bureau = Path(folder) / "bank.csv", Path(folder) / "bureau.csv"
        began, began_cpu = time.perf_counter(), time.process_time()
        written = loan_data.write_tables(bank, bureau, args.rows, args.seed)
        seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
        size = bank.stat().st_size + bureau.stat().st_size
    rate = args.rows / seconds
    print(f"{args.rows:,} bank rows and {written['bureau_rows']:,} bureau rows ({size / 1e6:.0f} MB) in {seconds:.1f} s: "
          f"{rate:,.0f} bank rows/s ({args.rows / cpu_seconds:,.0f} per CPU second); peak RSS {before:.0f} MiB before, {peak_rss_mib():.0f} MiB after")
    print(json.dumps({"benchmark": "loan_generate", "rows": args.rows, **written, "seconds": round(seconds, 2),
                      "cpu_seconds": round(cpu_seconds, 2), "bank_rows_per_second": round(rate),
                      "bank_rows_per_cpu_second": round(args.rows / cpu_seconds), "bytes": size, "peak_rss_mib_before": round(before),
                      "peak_rss_mib_after": round(peak_rss_mib()), "cpus": os.cpu_count(),
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
