"""The whole system on one machine: Azurite, the twins, and our Functions host running
`function_app.py` unchanged, wired together by settings exactly as app settings would be in
Azure. Used by `python -m local_emulator up|demo`, the end-to-end tests and the benchmarks.

Every server listens on 127.0.0.1; `stop()` stops everything this stack started.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from local_emulator import tls as loopback_tls
from local_emulator import vault_rbac as rbac
from local_emulator.aci import AciTwin, skr_sidecar_factory
from local_emulator.registry import LOCAL_REGISTRY
from local_emulator.attestation import MaaTwin
from local_emulator.azurite import Azurite
from local_emulator.blob_events import BLOB_CREATED
from local_emulator.delivery import RetryPolicy
from local_emulator.eventgrid import EventGridTwin
from local_emulator.eventgrid_arm import EventGridManagement
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.ledger import LedgerTwin
from local_emulator.sevsnp import HardwareRoot
from shared import events, skr_sidecar, storage_names
from shared.settings import PROJECT_ROOT

TOPIC = "ccr-events"
STORAGE_TOPIC = "ccr-storage"   # the data account's system topic (BlobCreated), as in infra/
SUBSCRIPTION_ID = "00000000-0000-0000-0000-00000000c0de"
RESOURCE_GROUP = "ccr-local"
_RESOURCE_GROUP_ID = f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
VAULT_ID = f"{_RESOURCE_GROUP_ID}/providers/Microsoft.KeyVault/vaults/kv-ccr-local"
# The trainer's user-assigned identity (infra/modules/identities.bicep), attached to every group.
TRAINER_IDENTITY_ID = f"{_RESOURCE_GROUP_ID}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-trainer-local"
# What a party may do in the operator's vault (docs/DEPLOY.md, section 4): create its KEKs and
# read them back. Not Key Vault Crypto Officer, whose `keys/*` includes release.
KEK_CREATOR_ROLE = rbac.Role("3f0c6a8e-5d1b-4c4e-9a51-7d2f0e8b6c21", "Clean Room KEK Creator", (rbac.READ, rbac.CREATE))
LOCAL_PROFILE_PARTY = "local-profile"   # whoever runs `ccr` with the endpoints file (docs/GUIDE.md)


FIXED_PORTS = {"host": 7071, "azurite_blob": 10000, "azurite_queue": 10001, "azurite_table": 10002,
               "ledger": 8440, "maa": 8441, "keyvault": 8442, "aci": 8443, "eventgrid": 8444, "eventgrid_arm": 8445}


class HostProcess:
    """`python -m local_emulator host` in its own process group, so a test can kill -9 it.
    A restarted host keeps the port it got first, so URLs stay valid."""

    def __init__(self, app_dir: Path, env: dict, port: int = 0, log_path: Path | None = None, echo: bool = False,
                 start_timeout: float = 90.0):
        self.app_dir, self.env, self.port, self.log_path, self.echo = Path(app_dir), env, port, log_path, echo
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> "HostProcess":
        self.url = ""  # a restart must announce itself again
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local_emulator", "host", "--app-dir", str(self.app_dir), "--port", str(self.port)],
            cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self.process, ready), daemon=True)
        self._reader.start()
        if not ready.wait(self.start_timeout) or not self.url:
            self.kill()
            raise RuntimeError("the Functions host did not start:\n" + "".join(self.lines[-40:]))
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def _read(self, process: subprocess.Popen, ready: threading.Event) -> None:
        log = self.log_path.open("a") if self.log_path else None
        for line in process.stdout:
            self.lines.append(line)
            if self.echo:
                print(line, end="", flush=True)
            if log:
                log.write(line)
                log.flush()
            found = re.match(r"Host listening on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                ready.set()
        ready.set()
        if log:
            log.close()

    def logs(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """kill -9 the whole process group: what a crash looks like."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_output()

    def stop(self, timeout: float = 15.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_output()

    def _close_output(self) -> None:
        """Once the reader has seen the end of the output (all of it is in logs()), close the pipe."""
        if self._reader is not None:
            self._reader.join(5)
            if not self._reader.is_alive():
                self.process.stdout.close()


class Stack:
    """Start with `start()`, read settings from `settings`, stop with `stop()`."""

    def __init__(self, state_dir: Path, app_dir: Path = PROJECT_ROOT, ports: dict[str, int] | None = None,
                 fast_retries: bool = False, echo_host_log: bool = False):
        """`ports`: fixed ports by service name (see FIXED_PORTS); 0 or absent picks a free one.
        Fixed ports matter for a stack that restarts on its own data: release policies name
        the attestation authority's URL and DIDs name the ledger's."""
        self.state_dir = Path(state_dir)
        self.registry_dir = self.state_dir / "registry"   # the local registry the ACI twin pulls OCI images from
        self.app_dir = Path(app_dir)
        self.ports = {**dict.fromkeys(FIXED_PORTS, 0), **(ports or {})}
        self.echo_host_log = echo_host_log
        self.fast_retries = fast_retries  # a test's stack: short retries, and its data is thrown away
        # short retries, but enough of them (about 2 minutes) to ride out a host restart on a slow machine
        self._retry = RetryPolicy(initial_seconds=0.5, maximum_seconds=2, attempts=60) if fast_retries else RetryPolicy()
        self._started: list = []
        self.settings: dict[str, str] = {}
        self.host: HostProcess | None = None
        self._party_principals: dict[str, str] = {}     # party name -> its principal in the vault twin

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        os.environ.setdefault("CCR_LOCAL_PROFILE", "1")  # a process running a stack is local (shared/settings.py)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tls = loopback_tls.load_or_create(self.state_dir)
        token = self._secret("access_token")
        ports = self.ports
        self.azurite = self._run(Azurite(self.state_dir / "azurite", ports["azurite_blob"], ports["azurite_queue"],
                                         ports["azurite_table"], account_key=self._account_key(),
                                         stop_grace_seconds=1.0 if self.fast_retries else 5.0))
        storage = self.azurite.connection_string
        root = HardwareRoot.load_or_create(self.state_dir)
        self.maa = self._run(MaaTwin(self.state_dir / "maa", tls, [root.public_pem], port=ports["maa"]))
        self.vault_access = local_vault_access(token, self._secret("trainer_identity_token"))
        self._party_principals.clear()       # a new vault twin: parties are added again as they come
        self.keyvault = self._run(KeyVaultTwin(self.state_dir / "keyvault", tls, self.vault_access,
                                               port=ports["keyvault"]))
        self.eventgrid = self._run(EventGridTwin(self.state_dir / "eventgrid", storage, port=ports["eventgrid"],
                                                       retry=self._retry, blob_poll_seconds=0.5,
                                                       ca_bundle=str(tls.ca_path)))
        topic = self.eventgrid.create_topic(TOPIC)
        self.eventgrid_arm = self._run(EventGridManagement(self.eventgrid, tls.server_context(), token,
                                                           port=ports["eventgrid_arm"]))
        # the SKR sidecar the twin runs, the host deploys and `ccr` (endpoints.json) writes into contracts
        sidecar_image = os.environ.get(skr_sidecar.SIDECAR_IMAGE_SETTING) or skr_sidecar.DEFAULT_SIDECAR.image
        self.aci = self._run(AciTwin(self.state_dir / "aci", self.state_dir / "images", tls.server_context(), token,
                                     skr_sidecar_factory(root, str(tls.ca_path), None), port=ports["aci"],
                                     sidecar_image=sidecar_image,
                                     registry_dir=self.registry_dir,
                                     identities={TRAINER_IDENTITY_ID: self._secret("trainer_identity_token")},
                                     registry_pullers=(TRAINER_IDENTITY_ID,)))   # AcrPull, as infra/modules/rbac.bicep
        self.settings = {
            "AzureWebJobsStorage": storage, "CCR_STORAGE_CONNECTION": storage,
            "CCR_EMULATOR_DIR": str(self.state_dir), "CCR_CA_BUNDLE": str(tls.ca_path),
            "CCR_ACCESS_TOKEN": token,
            "CCR_KEYVAULT_URL": self.keyvault.url, "CCR_KEYVAULT_VERIFY_CHALLENGE": "false",
            "CCR_MAA_URL": self.maa.url,
            "CCR_ARM_URL": self.aci.url, "CCR_SUBSCRIPTION_ID": SUBSCRIPTION_ID,
            "CCR_RESOURCE_GROUP": RESOURCE_GROUP, "CCR_LOCATION": "local",
            "CCR_TRAINER_IDENTITY_ID": TRAINER_IDENTITY_ID, "CCR_TRAINER_REGISTRY": LOCAL_REGISTRY,
            "CCR_EVENTGRID_TOPIC_URL": topic.endpoint, "CCR_EVENTGRID_KEY": topic.key,
            "CCR_EVENTGRID_TOPIC_ID": topic.resource_id, "CCR_EVENTGRID_ARM_URL": self.eventgrid_arm.url,
            "CCR_FUNCTION_KEY": self._secret("function_key"),
            "CCR_DURABLE_SYSTEM_KEY": self._secret("durable_system_key"),
            "CCR_EVENTGRID_SYSTEM_KEY": self._secret("eventgrid_system_key"),
            "CCR_BLOBS_EXTENSION_KEY": self._secret("blobs_extension_key"),
            "CCR_PARTY_AUTH_SECRET": self._secret("party_auth_secret"),
            skr_sidecar.SIDECAR_IMAGE_SETTING: sidecar_image,
        }
        # The ledger starts first (its webhook is set once the host is up; entries complete before that
        # wait as pending): the app reads dataset version declarations from it (CCR_LEDGER_URL).
        self.ledger = self._run(LedgerTwin(
            self.state_dir / "ledger", webhook_url=None,
            webhook_key=self.settings["CCR_FUNCTION_KEY"], ssl_context=tls.server_context(),
            port=ports["ledger"], retry=self._retry))
        self.settings["CCR_LEDGER_URL"] = self.ledger.url
        self.host = HostProcess(self.app_dir, self.process_env(), ports["host"],
                                log_path=self.state_dir / "host.log", echo=self.echo_host_log).start()
        self._started.append(self.host)
        self.settings["CCR_FUNCTIONS_URL"] = self.host.url
        self.ledger.webhook_url = f"{self.host.url}/api/contracts"
        if self.app_dir.resolve() == PROJECT_ROOT.resolve():  # another app has no completion trigger
            self._subscribe_host()
        self._write_endpoints()

    def _subscribe_host(self) -> None:
        """The subscriptions infra/subscriptions.bicep creates: completion and progress events to the host's
        Event Grid trigger; BlobCreated in datasets/, models/ and inference-batches/ (the storage account's system
        topic) to the blob triggers' webhook with the blobs_extension key."""
        endpoint = (f"{self.host.url}/runtime/webhooks/eventgrid?functionName=trainer_finished"
                    f"&code={self.settings['CCR_EVENTGRID_SYSTEM_KEY']}")
        self.eventgrid.create_subscription(TOPIC, "trainer-completion", endpoint,
                                           event_types=[events.TRAINER_COMPLETED, events.TRAINER_FAILED,
                                                        events.TRAINER_PROGRESS])
        self.eventgrid.create_system_topic(STORAGE_TOPIC)
        for name, container, function in (("ccr-datasets-arrived", storage_names.DATASETS, "dataset_arrived"),
                                          ("ccr-models-arrived", storage_names.MODELS, "model_arrived"),
                                          ("ccr-inference-batches-arrived", storage_names.INFERENCE_BATCHES,
                                           "inference_batch_arrived")):
            webhook = (f"{self.host.url}/runtime/webhooks/blobs?functionName=Host.Functions.{function}"
                       f"&code={self.settings['CCR_BLOBS_EXTENSION_KEY']}")
            self.eventgrid.create_subscription(STORAGE_TOPIC, name, webhook, event_types=[BLOB_CREATED],
                                               subject_begins_with=f"/blobServices/default/containers/{container}/",
                                               max_delivery_attempts=30)

    def party_token(self, party: str) -> str:
        """`party`'s own Key Vault token (persisted), holding the KEK creator role in the vault."""
        if not re.fullmatch(r"[a-z0-9-]{1,40}", party):
            raise ValueError("a party name is lowercase letters, digits and hyphens")
        token = self._secret(f"party_token_{party}")
        if party not in self._party_principals:
            self._party_principals[party] = add_party(self.vault_access, token)
        return token

    def subscribe(self, name: str, endpoint: str, event_types: list[str]) -> None:
        """Another subscriber (e.g. the TDC's own endpoint for CCR.Run.Finished)."""
        self.eventgrid.create_subscription(TOPIC, name, endpoint, event_types=event_types)

    def _run(self, service):
        started = service.start()
        self._started.append(service)
        return started

    def _secret(self, name: str) -> str:
        """Local secrets persist in the state folder (0600), so a restarted stack matches its data."""
        path = self.state_dir / "secrets" / name
        if not path.exists():
            loopback_tls.write_private(path, secrets.token_urlsafe(32).encode())
        return path.read_text().strip()

    def _account_key(self) -> str:
        """The storage account key (base64 of 64 random bytes, as Azure's): the control plane's
        alone, never Azurite's public development key."""
        path = self.state_dir / "secrets" / "storage_account_key"
        if not path.exists():
            loopback_tls.write_private(path, base64.b64encode(secrets.token_bytes(64)))
        return path.read_text().strip()

    def party_settings(self, party_dir: Path, party: str = "party") -> dict[str, str]:
        """What a party's `ccr` needs: service URLs, the loopback CA, the party's own Key Vault
        token (`party_token`), the attestation authority its grants pin and the SKR sidecar the
        platform runs (public, written into contracts); never the app's
        token, the storage connection, a function or system key, or a service secret.
        `party_dir` stands in for the emulator folder so nothing falls back to this stack's
        endpoints file."""
        names = ("CCR_FUNCTIONS_URL", "CCR_LEDGER_URL", "CCR_CA_BUNDLE", "CCR_KEYVAULT_URL",
                 "CCR_KEYVAULT_VERIFY_CHALLENGE", "CCR_MAA_URL", skr_sidecar.SIDECAR_IMAGE_SETTING)
        return {**{name: self.settings[name] for name in names}, "CCR_ACCESS_TOKEN": self.party_token(party),
                "CCR_EMULATOR_DIR": str(party_dir)}

    def _write_endpoints(self) -> None:
        """The local profile's settings file, read by `ccr` (docs/GUIDE.md: one person playing
        every party): its Key Vault token is a party's, not the app's."""
        path = self.state_dir / "endpoints.json"
        endpoints = {**self.settings, "CCR_ACCESS_TOKEN": self.party_token(LOCAL_PROFILE_PARTY)}
        loopback_tls.write_private(path, json.dumps(endpoints, indent=2, sort_keys=True).encode())

    def process_env(self) -> dict[str, str]:
        """Environment for a process of this stack (the host, the CLI, a party's script)."""
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, **self.settings}

    def restart_host(self) -> None:
        self.host.start()

    def stop(self) -> None:
        for service in reversed(self._started):
            try:
                service.stop()
            except Exception as error:  # noqa: BLE001 - stop the rest whatever one does
                print(f"stopping {type(service).__name__}: {error}", file=sys.stderr)
        self._started.clear()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def local_vault_access(app_token: str, trainer_token: str) -> rbac.VaultAccess:
    """The vault's principals and role assignments as infra/modules/rbac.bicep makes them: the
    app's identity holds Key Vault Reader (it reads KEKs and their release policies) and the KEK
    creator role (it creates continued-training contracts' state KEKs; it can release none), the
    trainer's identity Key Vault Crypto Service Release User; parties are added by `add_party`."""
    access = rbac.VaultAccess(VAULT_ID)
    app = access.add_principal(app_token)
    access.assign(app, rbac.KEY_VAULT_READER)                                                   # appKeyVaultReader
    access.assign(access.add_principal(trainer_token), rbac.CRYPTO_SERVICE_RELEASE_USER)         # trainerKeyRelease
    access.define_role(KEK_CREATOR_ROLE.name, KEK_CREATOR_ROLE.data_actions, KEK_CREATOR_ROLE.id)
    access.assign(app, KEK_CREATOR_ROLE.id)  # appStateKekCreator: contracts' state KEKs (shared/model_states.py)
    return access


def add_party(access: rbac.VaultAccess, token: str) -> str:
    """A party's principal holding the KEK creator role on the vault (docs/DEPLOY.md section 4)."""
    holder = access.add_principal(token)
    access.assign(holder, KEK_CREATOR_ROLE.id)
    return holder


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Poll until `predicate()` returns something truthy; its value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
