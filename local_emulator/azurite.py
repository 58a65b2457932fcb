"""Azurite (the real storage emulator from npm) as a child process on loopback: blob, queue
and table services, a data folder that survives restarts, stopped with its process group.

By default the account is Azurite's well-known development account, whose key is public. A
stack that must keep its account key secret (parties never hold it) passes `account_key`:
Azurite then serves `devstoreaccount1` with that key only (`AZURITE_ACCOUNTS`), as an Azure
account whose key stays with the control plane."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from shared.settings import PROJECT_ROOT, emulator_dir

ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
SERVICES = ("blob", "queue", "table")
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (http://\S+)")


def connection_string(blob_url: str, queue_url: str, table_url: str, account_key: str = ACCOUNT_KEY) -> str:
    """The connection string the Azure SDK clients (and AzureWebJobsStorage) expect."""
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={account_key};"
            f"BlobEndpoint={blob_url}/{ACCOUNT};QueueEndpoint={queue_url}/{ACCOUNT};"
            f"TableEndpoint={table_url}/{ACCOUNT};")


class Azurite:
    """Start/stop Azurite. Ports 0 pick free ephemeral ports (tests); `up` uses 10000-10002."""

    env_names = ("AzureWebJobsStorage", "CCR_STORAGE_CONNECTION")

    def __init__(self, location: Path | None = None, blob_port: int = 0, queue_port: int = 0,
                 table_port: int = 0, start_timeout: float = 30.0, account_key: str | None = None,
                 stop_grace_seconds: float = 5.0):
        """`stop_grace_seconds`: how long `stop` lets Azurite close gracefully (it waits for idle
        keep-alive clients, and saves its metadata) before killing it; short only for data that
        is thrown away."""
        self.location = Path(location) if location else emulator_dir() / "azurite"
        self.stop_grace_seconds = stop_grace_seconds
        self.account_key = account_key or ACCOUNT_KEY
        self.ports = {"blob": blob_port, "queue": queue_port, "table": table_port}
        self.start_timeout = start_timeout
        self.urls: dict[str, str] = {}
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> "Azurite":
        self.location.mkdir(parents=True, exist_ok=True)
        command = [str(PROJECT_ROOT / "node_modules" / ".bin" / "azurite"),
                   "--location", str(self.location), "--skipApiVersionCheck", "--loose", "--silent"]
        for service in SERVICES:
            command += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(self.ports[service])]
        env = {name: value for name, value in os.environ.items() if name != "AZURITE_ACCOUNTS"}
        if self.account_key != ACCOUNT_KEY:
            env["AZURITE_ACCOUNTS"] = f"{ACCOUNT}:{self.account_key}"
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True, env=env)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_output, args=(ready,), daemon=True)
        self._reader.start()
        if not ready.wait(self.start_timeout) or len(self.urls) < len(SERVICES):
            self.stop()
            raise RuntimeError(f"Azurite did not start within {self.start_timeout:.0f} s "
                               f"(is `npm ci` done? data dir {self.location})")
        return self

    def _read_output(self, ready: threading.Event) -> None:
        for line in self.process.stdout:
            found = _LISTENING.search(line)
            if found:
                self.urls[found.group(1).lower()] = found.group(2)
                if len(self.urls) == len(SERVICES):
                    ready.set()
        ready.set()  # process ended: let start() fail fast

    @property
    def url(self) -> str:
        return self.urls["blob"]

    @property
    def connection_string(self) -> str:
        return connection_string(self.urls["blob"], self.urls["queue"], self.urls["table"], self.account_key)

    def endpoints(self) -> dict[str, str]:
        return {name: self.connection_string for name in self.env_names}

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=self.stop_grace_seconds)
            except subprocess.TimeoutExpired:  # it waits for idle keep-alive clients to hang up
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._reader.join(5)  # it reads to the end of the output, then the pipe can be closed
        if not self._reader.is_alive():
            self.process.stdout.close()


def wait_until_reachable(azurite: Azurite, timeout: float = 10.0) -> None:
    """Block until the table service answers (it is the last one to come up)."""
    from azure.data.tables import TableServiceClient
    deadline = time.monotonic() + timeout
    while True:
        try:
            with TableServiceClient.from_connection_string(azurite.connection_string) as client:
                list(client.list_tables())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
