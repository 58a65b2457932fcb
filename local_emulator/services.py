"""`python -m local_emulator up`: Azurite, every registered twin and the Functions host in one
foreground process, and `.emulator/endpoints.json` (setting name -> value) for the app, the
CLI and tests.

To add a twin, append a ServiceSpec to SERVICES: its factory gets the EmulatorContext (the
emulator folder and the settings published by the services started before it) and returns
an unstarted object with start() / stop(), a `url`, and endpoints() -> {setting: value}.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from local_emulator.azurite import Azurite
from shared.settings import PROJECT_ROOT, emulator_dir

log = logging.getLogger("local_emulator")


class Service(Protocol):
    url: str

    def start(self): ...

    def stop(self) -> None: ...

    def endpoints(self) -> dict[str, str]: ...


@dataclass
class EmulatorContext:
    emulator_dir: Path
    settings: dict[str, str] = field(default_factory=dict)  # published so far, in start order
    ephemeral_ports: bool = False  # demo/tests: free ports instead of the well-known ones


@dataclass
class ServiceSpec:
    name: str
    factory: Callable[[EmulatorContext], Service]


def _azurite(context: EmulatorContext) -> Azurite:
    ports = (0, 0, 0) if context.ephemeral_ports else (10000, 10001, 10002)
    return Azurite(context.emulator_dir / "azurite", *ports)


# Start order matters: later factories may read earlier settings from the context.
SERVICES: list[ServiceSpec] = [
    ServiceSpec("azurite", _azurite),
]

HOST_KEY_SETTINGS = ("CCR_FUNCTION_KEY", "CCR_EVENTGRID_SYSTEM_KEY", "CCR_DURABLE_SYSTEM_KEY", "CCR_MASTER_KEY")


def _host_keys(folder: Path) -> dict[str, str]:
    """Keys stay the same across `up` runs (kept in .emulator/host-keys.json, mode 0600)."""
    path = folder / "host-keys.json"
    try:
        keys = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        keys = {}
    for name in HOST_KEY_SETTINGS:
        keys[name] = os.environ.get(name) or keys.get(name) or secrets.token_urlsafe(32)
    _write_private(path, keys)
    return keys


def _write_private(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)


class Emulator:
    """Starts SERVICES in order, then the host in this process's event loop; stops in reverse."""

    def __init__(self, app_dir: Path, port: int = 7071, folder: Path | None = None,
                 ephemeral_ports: bool = False):
        self.app_dir = Path(app_dir)
        self.port = port
        self.context = EmulatorContext(Path(folder) if folder else emulator_dir(), ephemeral_ports=ephemeral_ports)
        self.started: list[tuple[str, Service]] = []
        self.host = None

    @property
    def endpoints_file(self) -> Path:
        return self.context.emulator_dir / "endpoints.json"

    async def start(self) -> "Emulator":
        from local_emulator.host.keys import HostKeys
        from local_emulator.host.server import FunctionHost
        try:
            for spec in SERVICES:
                service = spec.factory(self.context)
                await asyncio.to_thread(service.start)
                self.started.append((spec.name, service))
                self.context.settings.update(service.endpoints())
                log.info("%s listening on %s", spec.name, service.url)
            keys = _host_keys(self.context.emulator_dir)
            os.environ.update(self.context.settings)
            os.environ.update(keys)
            self.host = FunctionHost(self.app_dir, self.context.settings["AzureWebJobsStorage"], self.port,
                                     HostKeys.from_env())
            await self.host.start()
        except BaseException:
            await self.stop()
            raise
        settings = {**self.context.settings, **keys, "CCR_FUNCTIONS_URL": self.host.url}
        _write_private(self.endpoints_file, settings)
        log.info("functions host listening on %s; settings in %s", self.host.url, self.endpoints_file)
        return self

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None
        while self.started:
            name, service = self.started.pop()
            await asyncio.to_thread(service.stop)
            log.info("%s stopped", name)


def run_demo() -> None:
    """Stub for the lead's end-to-end demo: until then, a durable sample through the HTTP API
    (start an orchestration, poll its check-status URL, print the output)."""
    import requests

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="ccr-demo-") as folder:
            emulator = Emulator(PROJECT_ROOT / "local_emulator" / "demo_app", port=0, folder=Path(folder),
                                ephemeral_ports=True)
            await emulator.start()
            try:
                key = os.environ["CCR_FUNCTION_KEY"]
                started = await asyncio.to_thread(
                    requests.post, f"{emulator.host.url}/api/orchestrators/hello_sequence",
                    params={"code": key}, json=["Tokyo", "Seattle", "London"], timeout=30)
                started.raise_for_status()
                status_url = started.json()["statusQueryGetUri"]
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    status = (await asyncio.to_thread(requests.get, status_url, timeout=30)).json()
                    if status["runtimeStatus"] not in ("Pending", "Running"):
                        break
                    await asyncio.sleep(0.2)
                print(json.dumps({"runtimeStatus": status["runtimeStatus"], "output": status["output"]}), flush=True)
            finally:
                await emulator.stop()

    asyncio.run(main())
