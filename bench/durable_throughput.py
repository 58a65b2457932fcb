"""Durable throughput of the local host: N orchestrations, each fanning out to 10 trivial
activities, started through the app's HTTP starter (client.start_new) on Azurite.
Prints orchestrations/s, activities/s, p50/p95 start-to-completion latency (host
timestamps: createdTime -> lastUpdatedTime of the completed instance) and the CPU seconds the
host and Azurite spent, for N=50 and N=200; first, on the idle host, the activity hop: from
an activity's TaskScheduled timestamp in the history to the moment the activity function
began (it returns that moment), p50/p95 over sequential calls. The last line is one JSON
object with those figures."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from local_emulator.azurite import Azurite  # noqa: E402

APP_DIR = ROOT / "bench" / "fanout_app"
FAN_OUT = 10
RUNS = tuple(int(n) for n in os.environ.get("BENCH_RUNS", "50,200").split(","))
HOP_INSTANCES, HOPS = 10, 5


def start_host(connection: str, key: str, system_key: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AzureWebJobsStorage": connection, "CCR_FUNCTION_KEY": key,
           "CCR_DURABLE_SYSTEM_KEY": system_key, "CCR_TASK_HUB": "bench" + secrets.token_hex(4),
           "CCR_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "local_emulator", "host", "--app-dir", str(APP_DIR),
                                "--port", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    for line in process.stdout:
        found = re.match(r"Host listening on (\S+)", line)
        if found:
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
            return process, found.group(1)
        output.append(line)
    process.wait(30)  # the loop ends only when the host closed its output
    raise RuntimeError("host did not start:\n" + "".join(output))


def _drain(stream) -> None:
    """Keep reading the host's output so it never blocks on a full pipe; show warnings."""
    for line in stream:
        print("host:", line, end="", file=sys.stderr)


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(url: str, key: str, system_key: str, n: int, pids: dict[str, int]) -> dict:
    cities = [f"city-{i}" for i in range(FAN_OUT)]
    sessions = threading.local()  # each client thread keeps its connection, as an HTTP client does

    def start_one(_):
        if not hasattr(sessions, "client"):
            sessions.client = requests.Session()
        response = sessions.client.post(f"{url}/api/orchestrators/hello_sequence", params={"code": key},
                                        json=cities, timeout=60)
        response.raise_for_status()
        return response.json()["id"]

    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    began = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(start_one, range(n)))
    started = time.perf_counter() - began
    done: dict[str, dict] = {}
    deadline = time.monotonic() + 600
    while len(done) < n and time.monotonic() < deadline:
        listing = list_instances(url, system_key, "Completed,Failed")
        done = {s["instanceId"]: s for s in listing if s["instanceId"] in ids}
        if len(done) < n:
            time.sleep(0.25)
    elapsed = time.perf_counter() - began
    cpu = {f"{name}_cpu_s": round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
    failed = [s for s in done.values() if s["runtimeStatus"] != "Completed" or len(s["output"]) != FAN_OUT]
    if len(done) < n or failed:
        raise RuntimeError(f"N={n}: {len(done)} finished, {len(failed)} failed or wrong")
    latencies = [(parse(s["lastUpdatedTime"]) - parse(s["createdTime"])).total_seconds() for s in done.values()]
    figures = {"n": n, "activities": n * FAN_OUT, "seconds": round(elapsed, 2),
               "start_seconds": round(started, 2),
               "orchestrations_per_s": round(n / elapsed, 2),
               "activities_per_s": round(n * FAN_OUT / elapsed, 1),
               "p50_latency_s": round(statistics.median(latencies), 3),
               "p95_latency_s": round(percentile(latencies, 0.95), 3), **cpu}
    print(f"N={n:>4} x {FAN_OUT} activities: {figures['seconds']} s, "
          f"{figures['orchestrations_per_s']} orchestrations/s, {figures['activities_per_s']} activities/s, "
          f"latency p50 {figures['p50_latency_s']} s, p95 {figures['p95_latency_s']} s; CPU s "
          + ", ".join(f"{name} {cpu[name + '_cpu_s']}" for name in pids), flush=True)
    return figures


def activity_hops(url: str, key: str, instances: int = HOP_INSTANCES, hops: int = HOPS) -> dict:
    """Scheduled -> started of sequential activities on an otherwise idle host."""
    delays = []
    for _ in range(instances):
        links = requests.post(f"{url}/api/orchestrators/hop_probe", params={"code": key}, json=hops,
                              timeout=60).json()
        deadline = time.monotonic() + 60
        while True:
            status = requests.get(links["statusQueryGetUri"], params={"showHistory": "true",
                                                                      "showHistoryOutput": "true"}, timeout=60).json()
            if status["runtimeStatus"] == "Completed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        completions = [e for e in status.get("historyEvents", []) if e["EventType"] == "TaskCompleted"]
        if len(completions) != hops:
            raise RuntimeError(f"hop probe: {status['runtimeStatus']}, {len(completions)} of {hops} activities")
        delays += [1000 * (parse(e["Result"]) - parse(e["ScheduledTime"])).total_seconds() for e in completions]
    figures = {"hops": len(delays), "p50_ms": round(statistics.median(delays), 1),
               "p95_ms": round(percentile(delays, 0.95), 1), "max_ms": round(max(delays), 1)}
    print(f"activity hop (scheduled -> started, idle host, {figures['hops']} hops): p50 {figures['p50_ms']} ms, "
          f"p95 {figures['p95_ms']} ms, max {figures['max_ms']} ms", flush=True)
    return figures


def list_instances(url: str, system_key: str, runtime_status: str) -> list[dict]:
    """Every page of an instance query (a page holds 100 unless `top` says otherwise, as on
    Azure), following x-ms-continuation-token."""
    found, token = [], ""
    while True:
        answer = requests.get(f"{url}/runtime/webhooks/durabletask/instances",
                              params={"code": system_key, "runtimeStatus": runtime_status, "top": "1000"},
                              headers={"x-ms-continuation-token": token} if token else {}, timeout=60)
        answer.raise_for_status()
        found += answer.json()
        token = answer.headers.get("x-ms-continuation-token", "")
        if not token:
            return found


def main() -> None:
    key, system_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as folder:
        azurite = Azurite(Path(folder)).start()
        host = None
        try:
            host, url = start_host(azurite.connection_string, key, system_key)
            pids = {"host": host.pid, "azurite": azurite.process.pid}
            results = {"activity_hop": activity_hops(url, key)}
            results.update({f"n{n}": run(url, key, system_key, n, pids) for n in RUNS})
        finally:
            if host is not None:
                os.killpg(host.pid, signal.SIGTERM)
                host.wait(30)
            azurite.stop()
    print(json.dumps({"benchmark": "durable_throughput", "fan_out": FAN_OUT, **results}))


if __name__ == "__main__":
    main()
