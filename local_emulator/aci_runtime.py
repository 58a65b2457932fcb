"""What the ACI twin does with a container group: check it as confidential ACI would, run
its trainer image as a local process group beside an SKR sidecar twin, and remember it.

Two kinds of image: a real OCI image, `<registry>/<repository>@sha256:<manifest digest>`,
pulled from the twin's local registry (local_emulator/registry.py verifies the manifest, the
config and every layer; a mismatch fails the group with ARM's InaccessibleImage) and run
chrooted in its own root filesystem with its own Python, its config's Env and WorkingDir under
the group's variables; or the source tarball `ccr-trainer@sha256:<hex>` (local_emulator/
images.py) run with the twin's Python.

Checks before anything starts (real confidential ACI enforces these at container start):
the image exists and hashes to its digest, and the group's CCE policy allows that
image digest, the exact command and the environment by value (every `NAME=VALUE` matches an
env rule, every required rule is met: a contract-bound policy refuses another contract's
digest or none). The SKR sidecar container is recognised by the platform's configured
sidecar image (`CCR_SKR_SIDECAR_IMAGE`, pinned by digest: shared/skr_sidecar.py), must be the
image the policy names, and is represented by a sidecar twin bound to the group's exact policy.

Group records are JSON files (no secret values) so a restarted twin still answers GET and
kills the process groups its predecessor left behind.

Each group's processes run under a uid of its own, the only one its SKR sidecar twin answers
(local_emulator/group_isolation.py says how and why); the uid is ended with the group.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from local_emulator import group_isolation, images
from local_emulator.registry import LocalRegistry, PulledImage, PullError, is_registry_reference
from shared.cce_policy import CcePolicyError, policy_containers
from shared.skr_sidecar import DEFAULT_SIDECAR, SIDECAR_IMAGE_SETTING, pinned_image

PYTHON_COMMANDS = {"python", "python3"}
LOG_TAIL_LIMIT = 1 << 20


class Sidecar(Protocol):
    url: str
    allowed_uid: int    # set by the runtime before start(): the only uid the sidecar answers

    def start(self) -> object: ...
    def stop(self) -> None: ...


SidecarFactory = Callable[[str], Sidecar]   # cce_policy_b64 -> unstarted sidecar (allowed_uid set after)


class GroupConflict(Exception):
    """A PUT that would change an existing group; `code` is the ARM error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ProvisioningError(Exception):
    """The group is refused; `code` is the ARM error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _process_start_marker(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/<pid>/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, marker: str | None) -> bool:
    return marker is not None and _process_start_marker(pid) == marker


def _kill_stragglers(pgid: int) -> None:
    """A container ends with its main process: SIGKILL whatever else is left in its group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_process_group(pid: int, marker: str | None, grace_seconds: float, popen=None) -> None:
    """SIGTERM the group, then SIGKILL what is left after the grace period."""
    if popen is None and not _alive(pid, marker):
        return                        # an orphan that is gone (or a reused pid): not ours
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if popen is not None:
                if popen.poll() is not None:
                    _kill_stragglers(pid)
                    return
            elif not _alive(pid, marker):
                _kill_stragglers(pid)
                return
            time.sleep(0.02)


class GroupRuntime:
    """Container groups by ARM id: provisioning, processes, persisted records, counts."""

    def __init__(self, state_dir: Path, images_dir: Path, sidecar_factory: SidecarFactory | None,
                 python: str = sys.executable, kill_grace_seconds: float = 5.0, registry: LocalRegistry | None = None,
                 sidecar_image: str = DEFAULT_SIDECAR.image):
        self.state_dir = Path(state_dir)
        self.sidecar_image = pinned_image(sidecar_image, "the ACI twin's SKR sidecar image")
        self.images_dir = Path(images_dir)
        self.registry = registry          # OCI images `<registry>/<repository>@sha256:...` (local_emulator/registry.py)
        self.registry_pullers: set[str] = set()   # identities (resource ids, lower case) with AcrPull on it
        self.sidecar_factory = sidecar_factory
        self.identity_tokens: dict[str, str] = {}   # user-assigned identity id (lower) -> its token (set by AciTwin)
        self.python = python
        self.kill_grace_seconds = kill_grace_seconds
        self._lock = threading.RLock()
        self._records: dict[str, dict] = {}
        self._popens: dict[str, subprocess.Popen] = {}
        self._sidecars: dict[str, Sidecar] = {}
        self._provisioned: dict[str, threading.Event] = {}
        self._sidecar_stop_lock = threading.Lock()
        self._uid_leases: dict[str, group_isolation.UidLease] = {}
        (self.state_dir / "groups").mkdir(parents=True, exist_ok=True)

    # --- persistence ------------------------------------------------------------------

    def _group_dir(self, record: dict) -> Path:
        return self.state_dir / "groups" / record["dir"]

    def _save(self, record: dict) -> None:
        path = self._group_dir(record) / "group.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            json.dump(record, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, path)

    def _stats_path(self) -> Path:
        return self.state_dir / "stats.json"

    def stats(self) -> dict:
        """How many groups were ever created, in total and per group id (survives deletes)."""
        try:
            return json.loads(self._stats_path().read_text())
        except FileNotFoundError:
            return {"created": 0, "deleted": 0, "groups": {}}

    def _count(self, key: str, group_id: str | None = None) -> None:
        stats = self.stats()
        stats[key] += 1
        if group_id is not None:
            stats["groups"][group_id] = stats["groups"].get(group_id, 0) + 1
        self._stats_path().write_text(json.dumps(stats, indent=1, sort_keys=True))

    def recover(self) -> None:
        """Load the records a previous twin left; kill its orphaned process groups."""
        for path in sorted((self.state_dir / "groups").glob("*/*/*/group.json")):
            record = json.loads(path.read_text())
            self._records[record["id"].lower()] = record
            if record["provisioning_state"] == "Deleting":
                self._finish_delete(record)
                continue
            if record["provisioning_state"] == "Creating":
                record["provisioning_state"] = "Failed"
                record["error"] = {"code": "ProvisioningInterrupted", "message": "the ACI twin restarted during creation"}
            if record.get("pid"):
                _kill_process_group(record["pid"], record.get("pid_start"), self.kill_grace_seconds)
            if record.get("pid") or any(c["state"] == "Running" for c in record["containers"].values()):
                self._terminate_all(record, exit_code=137, detail="Killed: the ACI twin restarted", state="Stopped")
            self._save(record)

    # --- queries ----------------------------------------------------------------------

    def get(self, group_id: str) -> dict | None:
        with self._lock:
            record = self._records.get(group_id.lower())
            return json.loads(json.dumps(record)) if record else None

    def list(self, prefix: str) -> list[dict]:
        with self._lock:
            return [json.loads(json.dumps(r)) for key, r in sorted(self._records.items())
                    if key.startswith(prefix.lower() + "/")]

    def log_tail(self, group_id: str, container: str, tail: int | None) -> str | None:
        record = self.get(group_id)
        if record is None or container not in record["containers"]:
            return None
        if container != record.get("trainer"):
            return ""
        path = self._group_dir(record) / "trainer.log"
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - LOG_TAIL_LIMIT))
                text = handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        lines = text.splitlines(keepends=True)
        return "".join(lines[-tail:] if tail else lines)

    # --- create -----------------------------------------------------------------------

    def create(self, group_id: str, dirname: str, record_fields: dict,
               environments: dict[str, dict]) -> tuple[dict, bool]:
        """(record, created): a new group is recorded as Creating and provisioned in the
        background; the same spec again returns the existing group (atomically: one creation).
        `environments` (container -> name -> value, secrets included) is never persisted."""
        record = {**record_fields, "id": group_id, "dir": dirname, "provisioning_state": "Creating",
                  "error": None, "group_state": "Pending", "pid": None, "pid_start": None,
                  "trainer": None, "sidecar": None,
                  "containers": {c["name"]: {"state": "Waiting", "detail": "Creating"}
                                 for c in record_fields["properties"]["containers"]}}
        with self._lock:
            existing = self._records.get(group_id.lower())
            if existing is not None:
                return self._existing(existing, record_fields["properties"]), False
            old = self._group_dir(record)
            if old.exists():
                shutil.rmtree(old)
            self._records[group_id.lower()] = record
            provisioned = self._provisioned[group_id.lower()] = threading.Event()
            self._save(record)
            self._count("created", group_id)
        threading.Thread(target=self._provision, args=(record, environments, provisioned), daemon=True).start()
        return self.get(group_id), True

    @staticmethod
    def _existing(record: dict, properties: dict) -> dict:
        if record["provisioning_state"] == "Deleting":
            raise GroupConflict("Conflict", "the container group is being deleted")
        if record["properties"] != properties:
            raise GroupConflict("ContainerGroupUpdateNotSupported",
                                "the twin does not update a container group in place; delete it first")
        return json.loads(json.dumps(record))

    def _provision(self, record: dict, environments: dict[str, dict], provisioned: threading.Event) -> None:
        try:
            self._provision_steps(record, environments)
        finally:
            provisioned.set()
            with self._lock:
                if self._provisioned.get(record["id"].lower()) is provisioned:
                    del self._provisioned[record["id"].lower()]

    def _provision_steps(self, record: dict, environments: dict[str, dict]) -> None:
        sidecar = None
        try:
            trainer, image, sidecar_name = self._check(record, environments)
            app_dir = None if isinstance(image, PulledImage) else images.extract(image, self._group_dir(record) / "app")
            if sidecar_name:
                sidecar = self._start_sidecar(record, sidecar_name)
            if app_dir is None:
                self._start_image(record, trainer, image, environments.get(trainer["name"], {}), sidecar)
            else:
                self._start_trainer(record, trainer, app_dir, environments.get(trainer["name"], {}), sidecar)
        except Exception as error:  # any failure ends as a Failed group, nothing left running
            self._stop_sidecar(record)
            code = getattr(error, "code", "InaccessibleImage" if isinstance(error, images.ImageError) else
                           "InvalidCcePolicy" if isinstance(error, CcePolicyError) else "ContainerGroupStartFailed")
            with self._lock:
                shutil.rmtree(self._group_dir(record) / "app", ignore_errors=True)
                if record["provisioning_state"] == "Creating":
                    record["provisioning_state"] = "Failed"
                record.update(group_state="Failed", error={"code": code, "message": str(error)})
                for state in record["containers"].values():
                    state.update(state="Waiting", detail=f"Not started: {code}")
                self._save(record)
            return
        with self._lock:
            if record["provisioning_state"] == "Creating":
                record["provisioning_state"] = "Succeeded"
            if record["group_state"] == "Pending":
                record["group_state"] = "Running"
            self._save(record)

    def _start_sidecar(self, record: dict, name: str) -> Sidecar:
        """The SKR sidecar twin for this group's exact policy (its hardware reports carry
        hostdata = sha256 of that policy)."""
        if self.sidecar_factory is None:
            raise ProvisioningError("SidecarUnavailable", "this twin has no SKR sidecar configured")
        uid = self._group_uid(record)
        token = self.identity_tokens.get((record.get("identity_id") or "").lower())
        # the group's identity's token, as IMDS gives it to the real sidecar (an identity-less group: the factory's)
        sidecar = self.sidecar_factory(_cce_policy(record), token) if token else self.sidecar_factory(_cce_policy(record))
        sidecar.allowed_uid = uid            # it answers this group's processes only
        sidecar.start()
        if getattr(sidecar, "allowed_uid", None) != uid:
            sidecar.stop()
            raise ProvisioningError("ContainerGroupIsolationUnavailable", "the SKR sidecar is not bound to the group")
        with self._lock:
            self._sidecars[record["id"].lower()] = sidecar
            record["sidecar"] = name
            record["containers"][name] = {"state": "Running", "start_time": now(), "detail": ""}
        return sidecar

    def _check(self, record: dict, environments: dict[str, dict]):
        """The trainer container, its verified image, and the sidecar container's name.
        `environments` holds each container's full environment (secure values included)."""
        containers = [{"name": c["name"], **c["properties"]} for c in record["properties"]["containers"]]
        sidecars = [c for c in containers if c["image"] == self.sidecar_image]
        runnable = [c for c in containers if c["image"] != self.sidecar_image]
        if len(runnable) != 1 or len(sidecars) > 1:
            others = ", ".join(f"{c['name']} ({c['image']})" for c in runnable)
            raise ProvisioningError("UnsupportedContainerGroup",
                                    "the twin runs exactly one trainer container plus at most one SKR sidecar, the "
                                    f"platform's {self.sidecar_image} ({SIDECAR_IMAGE_SETTING}); other containers: "
                                    f"{others or 'none'}")
        allowed = policy_containers(_cce_policy(record))
        named = [p for p in allowed if p.id == self.sidecar_image]
        if sidecars and not named:
            raise ProvisioningError("CcePolicyViolation", "the CCE policy does not name the SKR sidecar image "
                                    f"{self.sidecar_image} the group runs")
        trainer = runnable[0]
        environment = environments.get(trainer["name"], {})
        if is_registry_reference(trainer["image"]):
            image = self._pull(record, trainer["image"])
            candidates = [p for p in allowed if p.layers == (image.digest.split(":", 1)[1],)]
            # the container's environment is the image config's Env overridden by the group's
            environment = {**_image_env(image), **environment}
            candidates = [p for p in candidates if p.working_dir == (image.config.get("WorkingDir") or "/")] \
                or ([] if not candidates else _refuse(f"the CCE policy does not allow the working directory of "
                                                      f"image {image.digest}"))
        else:
            image = images.resolve(trainer["image"], self.images_dir)
            layer = image.digest.split(":", 1)[1]
            candidates = [p for p in allowed if p.layers == (layer,)]
        _enforce(trainer, environment, candidates, f"image {image.digest}")
        for sidecar in sidecars:
            _enforce(sidecar, environments.get(sidecar["name"], {}), named, f"image {self.sidecar_image}")
        return trainer, image, sidecars[0]["name"] if sidecars else None

    def _pull(self, record: dict, reference: str) -> PulledImage:
        """The image pulled and verified (manifest, config, layers), as a node pulls it."""
        if self.registry is None:
            raise ProvisioningError("InaccessibleImage", f"The image '{reference}' in container group "
                                    f"'{record['name']}' is not accessible: this twin has no registry")
        server = reference.split("/", 1)[0]
        credentials = record["properties"].get("imageRegistryCredentials") or []
        puller = next((c["identity"] for c in credentials if c.get("server") == server), None)
        if puller is None or puller.lower() not in self.registry_pullers:
            whom = "anonymously" if puller is None else f"as {puller}, which has no AcrPull there"
            raise ProvisioningError("InaccessibleImage", f"The image '{reference}' in container group "
                                    f"'{record['name']}' is not accessible. Please check the image and registry "
                                    f"credential. (pulled {whom})")
        try:
            return self.registry.pull(reference)
        except PullError as error:
            raise ProvisioningError("InaccessibleImage", f"The image '{reference}' in container group "
                                    f"'{record['name']}' is not accessible. Please check the image and registry "
                                    f"credential. ({error})") from None

    def _start_image(self, record: dict, trainer: dict, image: PulledImage, environment: dict,
                     sidecar: Sidecar | None) -> None:
        """Run the trainer chrooted in the image's own root filesystem (its layers under a
        writable layer of the group's), under the group's uid, with the image's Python: the
        image config's Env and WorkingDir, the group's variables over them, a fresh /tmp (also
        HOME) per group, the CA bundle at the path CCR_CA_BUNDLE names, the host's /proc."""
        uid = self._group_uid(record)
        group_dir = self._group_dir(record)
        home = group_isolation.private_home(group_dir / "home", uid)
        env = {**_image_env(image), "HOME": "/tmp", **environment}
        if sidecar is not None:
            env["CCR_SKR_URL"] = sidecar.url     # the group's localhost:8080, on this machine
        binds = [(str(home / "tmp"), "/tmp")]
        binds += group_isolation.ca_bundle_exposure(environment.get("CCR_CA_BUNDLE"), group_dir / "ca-bundle.pem",
                                                    always=True)
        binds += [(path, path) for path in ("/etc/hosts", "/etc/resolv.conf") if os.path.isfile(path)]
        rootfs = group_isolation.rootfs_plan(list(image.layers), group_dir / "container", binds)
        log_fd = os.open(group_dir / "trainer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            popen = group_isolation.start(self.python, list(trainer["command"]), env,
                                          Path(image.config.get("WorkingDir") or "/"), uid, [], log, rootfs=rootfs)
        self._started(record, trainer, popen)

    def _start_trainer(self, record: dict, trainer: dict, app_dir: Path, environment: dict,
                       sidecar: Sidecar | None) -> None:
        """Run the trainer under the group's own uid, seeing the image (read-only), a private
        HOME/TMPDIR and the CA bundle; output to the container log (written by the twin)."""
        uid = self._group_uid(record)
        command = list(trainer["command"])
        if command[0] in PYTHON_COMMANDS:
            command[0] = self.python
        group_dir = self._group_dir(record)
        home = group_isolation.private_home(group_dir / "home", uid)
        group_isolation.readable_image(app_dir)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "HOME": str(home), "TMPDIR": str(home / "tmp"), "PYTHONPATH": str(app_dir),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **environment}
        if sidecar is not None:
            env["CCR_SKR_URL"] = sidecar.url     # the group's localhost:8080, on this machine
        exposures = [(str(app_dir), str(app_dir)), (str(home), str(home))]
        exposures += group_isolation.ca_bundle_exposure(environment.get("CCR_CA_BUNDLE"), group_dir / "ca-bundle.pem")
        log_fd = os.open(group_dir / "trainer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            popen = group_isolation.start(self.python, command, env, app_dir, uid, exposures, log)
        self._started(record, trainer, popen)

    def _started(self, record: dict, trainer: dict, popen: subprocess.Popen) -> None:
        with self._lock:
            self._popens[record["id"].lower()] = popen
            record.update(pid=popen.pid, pid_start=_process_start_marker(popen.pid), trainer=trainer["name"])
            record["containers"][trainer["name"]] = {"state": "Running", "start_time": now(), "detail": ""}
            self._save(record)
        threading.Thread(target=self._watch, args=(record, popen), daemon=True).start()

    def _group_uid(self, record: dict) -> int:
        """The group's own uid, leased on first use (sidecar or trainer) until the group ends."""
        with self._lock:
            lease = self._uid_leases.get(record["id"].lower())
            if lease is None:
                lease = self._uid_leases[record["id"].lower()] = group_isolation.lease_uid()
                record["uid"] = lease.uid
            return lease.uid

    def _end_uid(self, record: dict) -> None:
        """Kill whatever still runs under the group's uid, wipe its home, free the uid."""
        with self._lock:
            lease = self._uid_leases.pop(record["id"].lower(), None)
        if lease is not None:
            lease.end(self._group_dir(record) / "home")

    def _watch(self, record: dict, popen: subprocess.Popen) -> None:
        exit_code = popen.wait()
        _kill_stragglers(popen.pid)
        self._stop_sidecar(record)
        with self._lock:
            if self._popens.get(record["id"].lower()) is not popen:
                return                       # deleted or stopped meanwhile: already recorded
            del self._popens[record["id"].lower()]
            detail = "Completed" if exit_code == 0 else "Error"
            self._terminate_all(record, exit_code, detail, "Succeeded" if exit_code == 0 else "Failed")
            self._save(record)

    def _terminate_all(self, record: dict, exit_code: int, detail: str, state: str) -> None:
        for name, container in record["containers"].items():
            if container["state"] == "Running":
                code = exit_code if name == record.get("trainer") else 0
                container.update(state="Terminated", exit_code=code, finish_time=now(), detail=detail)
        record.update(group_state=state, pid=None, pid_start=None)

    def _stop_sidecar(self, record: dict) -> None:
        """Stop the group's sidecar, then end its uid (every path that ends a group comes here
        once the trainer's main process is gone); a concurrent caller returns once both are done."""
        with self._sidecar_stop_lock:
            sidecar = self._sidecars.pop(record["id"].lower(), None)
            if sidecar is not None:
                sidecar.stop()
            self._end_uid(record)

    # --- stop / delete ----------------------------------------------------------------

    def stop_group(self, group_id: str, detail: str = "Killed: group stopped") -> bool:
        """Kill the trainer's process group and the sidecar; the record stays."""
        with self._lock:
            record = self._records.get(group_id.lower())
            if record is None:
                return False
            popen = self._popens.pop(group_id.lower(), None)
            pid, marker = record.get("pid"), record.get("pid_start")
        if pid:
            _kill_process_group(pid, marker, self.kill_grace_seconds, popen)
        self._stop_sidecar(record)
        with self._lock:
            if pid:
                self._terminate_all(record, exit_code=popen.returncode if popen and popen.returncode is not None
                                    else 137, detail=detail, state="Stopped")
            self._save(record)
        return True

    def delete(self, group_id: str) -> bool:
        """Mark Deleting, then kill and remove in the background (the LRO reports when done)."""
        with self._lock:
            record = self._records.get(group_id.lower())
            if record is None or record["provisioning_state"] == "Deleting":
                return record is not None
            record["provisioning_state"] = "Deleting"
            self._save(record)
        threading.Thread(target=self._finish_delete, args=(record,), daemon=True).start()
        return True

    def _finish_delete(self, record: dict) -> None:
        provisioned = self._provisioned.pop(record["id"].lower(), None)
        if provisioned is not None:
            provisioned.wait()          # let a creation in flight finish, then undo it
        self.stop_group(record["id"], detail="Killed: group deleted")
        with self._lock:
            shutil.rmtree(self._group_dir(record), ignore_errors=True)
            self._records.pop(record["id"].lower(), None)
            self._count("deleted")

    def shutdown(self) -> None:
        """Twin stopping: leave nothing running (records say Stopped)."""
        for group_id in list(self._records):
            if group_id in self._popens or group_id in self._sidecars:
                self.stop_group(group_id, detail="Killed: the ACI twin stopped")


def _image_env(image: PulledImage) -> dict:
    env = {}
    for entry in image.config.get("Env") or []:
        name, _, value = entry.partition("=")
        env[name] = value
    return env


def _refuse(reason: str):
    raise ProvisioningError("CcePolicyViolation", reason)


def _cce_policy(record: dict) -> str:
    return record["properties"]["confidentialComputeProperties"]["ccePolicy"]


def _enforce(container: dict, environment: dict, candidates: list, what: str) -> None:
    """Refuse a container the CCE policy does not allow: image, command, and environment by
    value (`PolicyContainer.env_problem`; the reason names a variable, never its value)."""
    if not candidates:
        raise ProvisioningError("CcePolicyViolation", f"the CCE policy does not allow {what}")
    command = tuple(container["command"])
    matching = [p for p in candidates if p.command == command]
    if not matching:
        raise ProvisioningError("CcePolicyViolation", f"the CCE policy does not allow this command for {what}")
    problems = [p.env_problem(environment) for p in matching]
    if None not in problems:
        raise ProvisioningError("CcePolicyViolation", f"the CCE policy refuses {what}: {problems[0]}")
