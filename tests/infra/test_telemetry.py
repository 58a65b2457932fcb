"""Application Insights is configured only when APPLICATIONINSIGHTS_CONNECTION_STRING is set; with
a well-formed connection string whose ingestion endpoint is a closed loopback port, configuring
touches no network at all and the exporter's only attempts (at exit) go to that port. Each case
runs in its own interpreter: OpenTelemetry's providers are process-global."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FAKE = ("InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=https://127.0.0.1:9/;LiveEndpoint=https://127.0.0.1:9/")

PROBE = """
import atexit, json, logging, sys
connects = []
sys.addaudithook(lambda event, args: connects.append(str(args[1])) if event == "socket.connect" else None)
atexit.register(lambda: print(json.dumps({"connects_by_exit": connects})))
from shared import telemetry
configured = telemetry.configure()
from opentelemetry import trace
logging.getLogger("ccr.probe").warning("probe")
print(json.dumps({"configured": configured, "connects": list(connects),
                  "distro_imported": "azure.monitor.opentelemetry" in sys.modules,
                  "tracer_provider": type(trace.get_tracer_provider()).__name__}))
"""


def _probe(tmp_path: Path, connection_string: str | None) -> tuple[dict, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    env.update(PYTHONPATH=str(PROJECT_ROOT), TMPDIR=str(tmp_path))   # the exporter's offline store stays here
    if connection_string:
        env["APPLICATIONINSIGHTS_CONNECTION_STRING"] = connection_string
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    first, last = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    return first, last["connects_by_exit"]


def test_without_the_setting_nothing_is_configured(tmp_path):
    result, connects = _probe(tmp_path, None)
    assert result == {"configured": False, "connects": [], "distro_imported": False,
                      "tracer_provider": "ProxyTracerProvider"}
    assert connects == []


def test_a_well_formed_connection_string_configures_without_touching_the_network(tmp_path):
    result, connects = _probe(tmp_path, FAKE)
    assert result["configured"] and result["distro_imported"] and result["tracer_provider"] == "TracerProvider"
    assert result["connects"] == []                                    # configuring opened no socket
    assert all(c == "('127.0.0.1', 9)" for c in connects)              # exporting: the fake endpoint only
