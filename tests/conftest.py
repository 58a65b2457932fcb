"""Fixtures shared by every test folder.

- `azurite_service` (session): Azurite from node_modules on free loopback ports with a temp
  data folder; `azurite` (session): its connection string. Stopped at the end of the session.
- `function_host` (function): a factory starting the local Functions host as a subprocess,
  `function_host(app_dir, env={...}, hub="name")` -> HostProcess (.url, .function_key,
  .system_key, .eventgrid_key, .master_key, .env, .logs(), .stop(), .kill(), .start() again on the
  same port). Every host a test started is stopped when the test ends. Give each test its own
  task hub (`hub=`, default a fresh random name) so tests sharing the session's Azurite do not
  see each other's work.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from local_emulator.azurite import Azurite

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def azurite_service(tmp_path_factory):
    service = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def azurite(azurite_service) -> str:
    return azurite_service.connection_string


class HostProcess:
    """`python -m local_emulator host` for one app folder, on a free loopback port."""

    def __init__(self, app_dir: Path, connection_string: str, env: dict | None = None, hub: str | None = None,
                 start_timeout: float = 60.0):
        self.app_dir = Path(app_dir)
        self.function_key = secrets.token_urlsafe(24)
        self.system_key = secrets.token_urlsafe(24)
        self.eventgrid_key = secrets.token_urlsafe(24)
        self.master_key = secrets.token_urlsafe(24)
        self.hub = hub or "h" + secrets.token_hex(6)
        self.env = {**os.environ,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
                    "AzureWebJobsStorage": connection_string, "CCR_STORAGE_CONNECTION": connection_string,
                    "CCR_FUNCTION_KEY": self.function_key, "CCR_DURABLE_SYSTEM_KEY": self.system_key,
                    "CCR_EVENTGRID_SYSTEM_KEY": self.eventgrid_key, "CCR_MASTER_KEY": self.master_key,
                    "CCR_TASK_HUB": self.hub,
                    "CCR_HOST_LEASE_SECONDS": "4", "CCR_BLOB_POLL_SECONDS": "0.2",
                    **(env or {})}
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.port = 0  # a restarted host keeps the port it got first, so URLs stay valid
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> "HostProcess":
        self.url = ""  # a restart must announce itself again
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local_emulator", "host", "--app-dir", str(self.app_dir),
             "--port", str(self.port)],
            cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self._reader.start()
        if not ready.wait(self.start_timeout) or not self.url:
            self.kill()
            raise RuntimeError("host did not start:\n" + self.logs())
        return self

    def _read(self, ready: threading.Event) -> None:
        for line in self.process.stdout:
            self._lines.append(line)
            found = re.match(r"Host listening on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                ready.set()
        ready.set()

    def logs(self) -> str:
        return "".join(self._lines)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_output()

    def kill(self) -> None:
        """kill -9: nothing gets a chance to clean up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close_output()

    def _close_output(self) -> None:
        """Once the reader has seen the end of the output (all of it is in logs()), close the pipe."""
        if self._reader is not None:
            self._reader.join(5)
            if not self._reader.is_alive():
                self.process.stdout.close()


@pytest.fixture
def function_host(azurite):
    started: list[HostProcess] = []

    def start(app_dir: Path, env: dict | None = None, hub: str | None = None) -> HostProcess:
        host = HostProcess(app_dir, azurite, env, hub).start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout:.0f} s")
        time.sleep(interval)
