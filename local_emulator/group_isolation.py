"""A container group's processes are isolated from the host's others, as a confidential ACI
group is: the claim the SKR sidecar twin's key release rests on.

The attack: in Azure the SKR sidecar listens on localhost:8080 inside its group's network
namespace, so nothing outside the group can ask it for a key. Our twin listens on the shared
host's loopback, where any local process could POST /key/release to a run's sidecar and get a
dataset key; and a trainer running as root could read the twins' secrets (the simulated AMD
signing key, Key Vault's keys) and forge its way to any key.

What stops it: each group runs under a uid (and the gid of the same number) of its own, leased
host-wide from TRAINER_UID_FIRST on (`lease_uid`: an flock'd file per uid, so twins in other
processes never share one; never a uid that has an account or a live process, such as one an
earlier group left behind). The group's sidecar answers only connections whose client socket
that uid owns (local_emulator/skr_sidecar.py); the uid cannot read other uids' files, signal
or ptrace their processes. When the group ends, every process of its uid is killed (also ones
that left the trainer's process group), its home is wiped and the uid freed (`UidLease.end`).

The trainer is started by a small launcher that runs as root (`start`): when something the
trainer needs (the interpreter under a 0700 /root, the extracted image or the CA bundle in a
0700 folder) sits below a directory a stranger uid cannot search, it makes a private mount
namespace in which that directory is replaced by a tmpfs holding only the needed paths (bind
mounts), then drops to the group's uid and gid with no supplementary groups and no_new_privs,
and execs the command. Secret folders are never loosened: the trainer does not see them. The
CA bundle is shown through a copy the twin owns, and only if it is certificates and nothing
else (CCR_CA_BUNDLE comes from the group's creator: it must not name a key). Without root the
twin refuses to start groups (they would run unisolated).

A real OCI image (local_emulator/registry.py) runs in a root filesystem of its own instead
(`rootfs_plan`): in the private mount namespace the launcher stacks the image's unpacked
layers under a writable layer of the container's (overlayfs), binds the host's /proc, a /dev
of the harmless nodes (null, zero, full, random, urandom, tty) and a private /dev/shm, the
group's fresh /tmp, the CA bundle copy at the path CCR_CA_BUNDLE names, /etc/hosts and
/etc/resolv.conf, then chroots there before dropping to the group's uid: the container sees
nothing of the host's files but those, and runs the image's own Python.
"""
from __future__ import annotations

import fcntl
import functools
import grp
import json
import os
import pwd
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

TRAINER_UID_FIRST = 61000
TRAINER_UID_COUNT = 184          # 61000-61183: below systemd's DynamicUser range (61184-65519)
UID_LEASE_DIR = Path("/run/ccr-aci-uids")
LAUNCH_TIMEOUT_SECONDS = 30.0
CA_BUNDLE_LIMIT = 1 << 20
LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class IsolationError(Exception):
    """The group cannot be run isolated; `code` is the ARM error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# --- a uid per container group ----------------------------------------------------------


class UidLease:
    """A uid held by one container group: an flock on `<lease dir>/<uid>`, which other twins
    on the host skip; freed by `end()` or when the twin's process dies."""

    def __init__(self, uid: int, fd: int):
        self.uid, self._fd = uid, fd

    def end(self, home: Path | None = None) -> None:
        """Kill whatever still runs under the uid, wipe the group's home, free the uid."""
        if self._fd is None:
            return
        kill_uid(self.uid)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes with `uid` as their real, effective, saved or fs uid."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if str(uid) in fields.get("Uid", "").split() and fields.get("State", "").split()[:1] not in (["Z"], ["X"]):
            pids.append(int(status.parent.name))
    return pids


def kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` until none is left."""
    for _ in range(500):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _account_exists(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _lease_dir() -> Path:
    directory = UID_LEASE_DIR if UID_LEASE_DIR.parent.is_dir() else Path(tempfile.gettempdir()) / "ccr-aci-uids"
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise IsolationError("ContainerGroupIsolationUnavailable", f"{directory} is not a folder only root may change")
    return directory


def lease_uid() -> UidLease:
    """A uid no other container group, account or live process has (needs root)."""
    if os.geteuid() != 0:
        raise IsolationError("ContainerGroupIsolationUnavailable",
                             "the ACI twin must run as root: it runs each container group under a uid of its own, "
                             "the only one the group's SKR sidecar answers, and does not run groups unisolated")
    directory = _lease_dir()
    for uid in range(TRAINER_UID_FIRST, TRAINER_UID_FIRST + TRAINER_UID_COUNT):
        if _account_exists(uid):
            continue
        fd = os.open(directory / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if processes_of(uid):          # left by an earlier group (e.g. of a crashed twin): never shared
            os.close(fd)
            continue
        return UidLease(uid, fd)
    raise IsolationError("ContainerGroupIsolationUnavailable", "no free container group uid on this host")


# --- the group's folders ------------------------------------------------------------------


def private_home(home: Path, uid: int) -> Path:
    """A fresh HOME with a TMPDIR (`home/tmp`), private to `uid`."""
    shutil.rmtree(home, ignore_errors=True)
    for folder in (home, home / "tmp"):
        folder.mkdir(mode=0o700)
        os.chown(folder, uid, uid)
    return home


def readable_image(app_dir: Path) -> None:
    """The extracted image stays root's (read-only for the group) but readable by it."""
    for dirpath, _, filenames in os.walk(app_dir):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, (os.stat(path).st_mode & 0o755) | 0o444)


@functools.lru_cache(maxsize=None)
def interpreter_paths(python: str) -> tuple[str, ...]:
    """The folders `python` runs from (its venv and base install), asked of it once."""
    probe = ("import json, os, sys; print(json.dumps(sorted({os.path.realpath(p) for p in (sys.prefix, "
             "sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath("
             "sys.executable)))})))")
    done = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, timeout=60,
                          env=LAUNCHER_ENV)
    if done.returncode != 0:
        raise IsolationError("ContainerGroupStartFailed", f"the interpreter {python} could not be inspected")
    return tuple(json.loads(done.stdout))


def ca_bundle_exposure(ca_bundle: str | None, copy: Path, always: bool = False) -> list[tuple[str, str]]:
    """[(source, shown at)] for the CA bundle if a stranger uid cannot read it where it is (or,
    `always`, for a container with a root filesystem of its own): a copy the twin owns, of
    certificates only (never a key); the original stays as it is."""
    if not ca_bundle or not os.path.isabs(ca_bundle) or not os.path.isfile(ca_bundle):
        return []
    if not always and unsearchable_top(Path(ca_bundle)) is None and os.stat(ca_bundle).st_mode & stat.S_IROTH:
        return []
    try:
        with open(ca_bundle, "rb") as handle:
            data = handle.read(CA_BUNDLE_LIMIT + 1)
    except OSError:
        return []
    blocks = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    if len(data) > CA_BUNDLE_LIMIT or not blocks or any(block != b"CERTIFICATE" for block in blocks):
        return []
    copy.write_bytes(data)
    os.chmod(copy, 0o644)
    return [(str(copy), ca_bundle)]


# --- what a stranger uid can reach, and the launcher that shows it the rest ---------------


def unsearchable_top(path: Path) -> Path | None:
    """The top-most directory above `path` that a stranger uid may not search (no o+x)."""
    for parent in reversed(path.parents):
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return parent
        except OSError:
            return None
    return None


def mount_plan(exposures: list[tuple[str, str]]) -> tuple[list, list]:
    """How to show each `source` at `target` to a stranger uid: `covers` [(dir, [(source,
    target)])] replace an unsearchable directory by a tmpfs holding only those paths; `binds`
    show another source at a target the uid reaches anyway."""
    covers: dict[str, list] = {}
    binds = []
    for source, target in exposures:
        top = unsearchable_top(Path(target))
        if top is not None:
            covers.setdefault(str(top), []).append((source, target))
        elif source != target:
            binds.append((source, target))
    plan = []
    for cover, wanted in sorted(covers.items()):
        kept: list[tuple[str, str]] = []
        for source, target in sorted(set(wanted), key=lambda pair: pair[1]):
            if source == target and any(s == t and target.startswith(t + "/") for s, t in kept):
                continue                        # already shown with a folder above it
            kept.append((source, target))
        plan.append((cover, kept))
    return plan, binds


# Runs as root with `python -I` (no PYTHON* variables, no cwd on sys.path) and LAUNCHER_ENV;
# gets its plan (command, environment with secrets, mounts) through a pipe, never argv; reports
# a failure before exec through the report pipe, whose end closes on exec.
_LAUNCHER = r"""
import ctypes, json, os, stat, sys
report = int(sys.argv[2])
try:
    with os.fdopen(int(sys.argv[1]), "rb") as pipe:
        plan = json.loads(pipe.read())
    libc = ctypes.CDLL(None, use_errno=True)
    def call(result, what):
        if result != 0:
            number = ctypes.get_errno()
            raise OSError(number, "%s: %s" % (what, os.strerror(number)))
    def mount(source, target, fstype, flags, data=None):
        call(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                        ctypes.c_ulong(flags), data and data.encode()), "mount on " + target)
    MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
    if plan["covers"] or plan["binds"]:
        call(libc.unshare(0x00020000), "unshare(CLONE_NEWNS) (needs CAP_SYS_ADMIN)")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        pairs = [pair for _, kept in plan["covers"] for pair in kept] + plan["binds"]
        opened = {source: os.open(source, os.O_PATH | os.O_CLOEXEC) for source, _ in pairs}
        os.umask(0o022)
        for cover, kept in plan["covers"]:
            mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for source, target in kept:
                if not os.path.lexists(target):
                    if stat.S_ISDIR(os.fstat(opened[source]).st_mode):
                        os.makedirs(target)
                    else:
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
                mount("/proc/self/fd/%d" % opened[source], target, None, MS_BIND | MS_REC)
        for source, target in plan["binds"]:
            mount("/proc/self/fd/%d" % opened[source], target, None, MS_BIND | MS_REC)
        for fd in opened.values():
            os.close(fd)
    root = plan.get("rootfs")
    if root:
        call(libc.unshare(0x00020000), "unshare(CLONE_NEWNS) (needs CAP_SYS_ADMIN)")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        top = root["target"]
        mount("overlay", top, "overlay", MS_NODEV, "lowerdir=%s,upperdir=%s,workdir=%s" % (
            ":".join(root["lower"]), root["upper"], root["work"]))
        os.umask(0o022)
        def inside(path, directory):
            where = top + path
            os.makedirs(os.path.dirname(where), exist_ok=True)
            if not os.path.lexists(where):
                if directory:
                    os.mkdir(where)
                else:
                    os.close(os.open(where, os.O_CREAT | os.O_WRONLY, 0o644))
            return where
        mount("/proc", inside("/proc", True), None, MS_BIND | MS_REC)
        mount("tmpfs", inside("/dev", True), "tmpfs", MS_NOSUID, "mode=0755,size=64k")
        for node in ("null", "zero", "full", "random", "urandom", "tty"):
            mount("/dev/" + node, inside("/dev/" + node, False), None, MS_BIND)
        mount("tmpfs", inside("/dev/shm", True), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, top + "/dev/" + name)
        for source, target, directory in root["binds"]:
            where = inside(target, directory)
            mount(source, where, None, MS_BIND | MS_REC)
            parent = os.path.dirname(target)
            while parent != "/":           # folders on the way stay searchable by the group's uid
                mode = os.stat(top + parent).st_mode
                if not mode & stat.S_IXOTH:
                    os.chmod(top + parent, stat.S_IMODE(mode) | 0o111)
                parent = os.path.dirname(parent)
        os.chroot(top)
        os.chdir("/")
    os.setgroups([])
    os.setresgid(plan["gid"], plan["gid"], plan["gid"])
    os.setresuid(plan["uid"], plan["uid"], plan["uid"])
    call(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.chdir(plan["cwd"])
    os.umask(0o077)
    os.set_inheritable(report, False)
    os.execvpe(plan["command"][0], plan["command"], plan["env"])
except BaseException as error:
    try:
        os.write(report, ("%s: %s" % (type(error).__name__, error)).encode()[:4000])
    finally:
        os._exit(126)
"""


def rootfs_plan(layers: list[Path], container_dir: Path, binds: list[tuple[str, str]]) -> dict:
    """How the launcher builds a container's root filesystem: the image's unpacked layers
    (base first) under a fresh writable layer of the container's own (overlayfs, at
    `container_dir/root`), the host's /proc, a /dev of the harmless nodes and a private
    /dev/shm, and each (host source, path in the container) of `binds`."""
    shutil.rmtree(container_dir, ignore_errors=True)
    for name in ("root", "upper", "work"):
        (container_dir / name).mkdir(parents=True, mode=0o755)
    return {"target": str(container_dir / "root"), "upper": str(container_dir / "upper"),
            "work": str(container_dir / "work"), "lower": [str(layer) for layer in reversed(layers)],
            "binds": [(source, target, os.path.isdir(source)) for source, target in binds]}


def start(python: str, command: list[str], env: dict, cwd: Path, uid: int, exposures: list[tuple[str, str]],
          log, rootfs: dict | None = None) -> subprocess.Popen:
    """Run `command` as `uid` (gid `uid`, no other groups) in a new session, seeing each
    exposure's source at its target, output to `log`. `python` runs the launcher (as root)
    and is exposed too. With `rootfs` (`rootfs_plan`) the command runs chrooted in the image's
    own root filesystem instead (its PATH, its Python), `cwd` a path inside it. A failure
    before the command runs raises IsolationError."""
    if rootfs is None:
        exposures = [(path, path) for path in interpreter_paths(python)] + list(exposures)
        covers, binds = mount_plan([(s, t) for s, t in exposures if os.path.exists(s)])
    else:
        covers, binds = [], []
    plan = {"uid": uid, "gid": uid, "cwd": str(cwd), "command": list(command), "env": env,
            "covers": covers, "binds": binds, "rootfs": rootfs}
    plan_read, plan_write = os.pipe()
    report_read, report_write = os.pipe()
    try:
        popen = subprocess.Popen([python, "-I", "-c", _LAUNCHER, str(plan_read), str(report_write)],
                                 env=LAUNCHER_ENV, pass_fds=(plan_read, report_write), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except BaseException:
        os.close(plan_write)
        os.close(report_read)
        raise
    finally:
        os.close(plan_read)
        os.close(report_write)
    try:
        data = memoryview(json.dumps(plan).encode())
        try:
            while data:
                data = data[os.write(plan_write, data):]
        except BrokenPipeError:
            pass                          # the launcher died: its report says why
        finally:
            os.close(plan_write)
        failure, deadline = b"", time.monotonic() + LAUNCH_TIMEOUT_SECONDS
        while True:
            ready, _, _ = select.select([report_read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                failure = b"the launcher did not finish in time"
                break
            chunk = os.read(report_read, 4096)
            if not chunk:
                break
            failure += chunk
    finally:
        os.close(report_read)
    if failure:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait()
        raise IsolationError("ContainerGroupStartFailed",
                             f"the container could not start isolated: {failure.decode(errors='replace')}")
    return popen
