"""The confidential trainer's OCI image, built without a container engine (tools/oci_image.py).

Three layers, from the rarely changed to the often changed (trainer_container/Dockerfile is
the same recipe for a machine with Docker):

1. base: Debian bookworm `debootstrap --variant=minbase` with Python 3.11, the CA
   certificates and the C++ runtime torch loads, an unprivileged `trainer` user (uid 10001),
   logs, apt caches and machine ids removed;
2. dependencies: trainer_container/requirements.txt installed with the host's pip for that
   interpreter (`--target /usr/local/lib/python3.11/dist-packages --only-binary=:all:
   --python-version 3.11 --platform manylinux_2_36_x86_64` and every older manylinux; torch==2.13.0 is the CPU wheel
   from the local wheel source pip is configured with), byte-compiled (unchecked-hash pycs:
   valid whatever the files' mtimes);
3. the code: trainer_container/ and shared/ under /app, byte-compiled the same way.

The image config is what shared/container_group.py's policy template says it is (Env,
WorkingDir, User), with `python3 -m trainer_container` as the entrypoint.

    python -m tools.trainer_image build [--tag latest]    prints the layout and digest
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from shared.container_group import TRAINER_IMAGE_ENV, TRAINER_WORKING_DIR
from tools.oci_image import (BuiltImage, ImageBuildError, ImageConfig, Layer, build, canonical_json, file_fingerprint,
                             packages_layer, sha256_hex, uncached_layers)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = PROJECT_ROOT / "trainer_container" / "requirements.txt"
CODE_PACKAGES = ("trainer_container", "shared")
TRAINER_REPOSITORY = "ccr-trainer"
SUITE = "bookworm"
MIRROR = os.environ.get("CCR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3.11", "python3", "python-is-python3", "ca-certificates", "libstdc++6", "libgomp1")
PYTHON_VERSION = "3.11"
# bookworm's glibc is 2.36: wheels for it or any older manylinux (pip does not widen a --platform itself)
PIP_PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"   # on Debian's python3.11 sys.path
TRAINER_UID = 10001
ENTRYPOINT = ("python3", "-m", "trainer_container")
# Left out of the base: what a build leaves behind that differs per build and nobody reads.
BASE_DROPPED = ("var/log", "var/cache/apt", "var/lib/apt/lists", "var/cache/ldconfig/aux-cache",
                "var/cache/debconf/templates.dat-old", "var/cache/debconf/config.dat-old",
                "var/lib/dpkg/status-old", "var/lib/dpkg/diversions-old", "etc/hostname", "etc/resolv.conf",
                "etc/machine-id", "var/lib/dbus/machine-id", "usr/share/doc", "usr/share/man", "usr/share/info",
                "usr/share/locale")


def _run(command: list[str], **kwargs) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise ImageBuildError(f"{command[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


def _compile(folder: Path, staging: Path) -> None:
    """unchecked-hash pycs next to the sources (same 3.11 magic number as the image's Python),
    naming the paths the image has. Files this interpreter cannot compile (torch ships 3.12-only
    test helpers) are left without a pyc, as pip leaves them."""
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                           "unchecked-hash", "-s", str(staging), "-p", "/", str(folder)],
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise ImageBuildError(f"compileall failed ({done.returncode}): {done.stderr[-2000:]}")


def base_layer() -> Layer:
    def populate(staging: Path) -> None:
        if shutil.which("debootstrap") is None:
            raise ImageBuildError("debootstrap is not installed (apt-get install -y debootstrap; `make setup` does)")
        if os.geteuid() != 0:
            raise ImageBuildError("debootstrap needs root")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(staging),
              MIRROR], timeout=1800)
        for relative in BASE_DROPPED:
            path = staging / relative
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                path.mkdir()
                os.chmod(path, 0o755)
            elif os.path.lexists(path):
                path.unlink()
        for folder in ("dev", "proc", "sys", "run", "tmp"):
            path = staging / folder
            if path.is_dir():
                shutil.rmtree(path)
            path.mkdir()
            os.chmod(path, 0o1777 if folder == "tmp" else 0o755)
        (staging / "etc" / "machine-id").write_text("")
        with (staging / "etc" / "passwd").open("a") as passwd:
            passwd.write(f"trainer:x:{TRAINER_UID}:{TRAINER_UID}::/home/trainer:/usr/sbin/nologin\n")
        with (staging / "etc" / "group").open("a") as group:
            group.write(f"trainer:x:{TRAINER_UID}:\n")
        home = staging / "home" / "trainer"
        home.mkdir(parents=True)
        os.chown(home, TRAINER_UID, TRAINER_UID)

    recipe = canonical_json({"suite": SUITE, "variant": "minbase", "packages": BASE_PACKAGES, "mirror": MIRROR,
                             "dropped": BASE_DROPPED, "user": TRAINER_UID})
    return Layer(f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {SUITE}", sha256_hex(recipe),
                 populate)


def records_of_installed_files_only(site_packages: Path) -> None:
    """Drop from pip's RECORD files the entries of files the layer does not have: the console
    scripts removed above are listed with the hash of their shebang, which names the building
    interpreter's path, so the layer's digest depended on where the building checkout lives
    (/work/main and a worktree built different digests from the same inputs)."""
    root = os.path.normpath(site_packages)
    for record in sorted(Path(site_packages).glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _installed(root, next(csv.reader([line]), [""])[0])]
        if kept != lines:
            record.write_text("".join(kept))


def _installed(root: str, relative: str) -> bool:
    path = os.path.normpath(os.path.join(root, relative))
    return path.startswith(root + os.sep) and os.path.lexists(path)


def dependencies_layer(requirements: Path = REQUIREMENTS) -> Layer:
    def populate(staging: Path) -> None:
        target = staging / SITE_PACKAGES
        target.mkdir(parents=True)
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-warn-script-location",
              "--disable-pip-version-check", "--target", str(target), "--only-binary=:all:",
              "--python-version", PYTHON_VERSION, "--implementation", "cp",
              *(f"--platform={platform}" for platform in PIP_PLATFORMS), "-r", str(requirements)], timeout=3600)
        shutil.rmtree(target / "bin", ignore_errors=True)      # console scripts with the host's shebang
        records_of_installed_files_only(target)
        _compile(target, staging)
        for folder in [target, *target.parents]:
            if folder == staging:
                break
            os.chmod(folder, 0o755)

    recipe = canonical_json({"requirements": file_fingerprint(requirements), "python": PYTHON_VERSION,
                             "platforms": PIP_PLATFORMS, "target": SITE_PACKAGES, "records": "installed files only"})
    return Layer(f"pip install --target /{SITE_PACKAGES} -r trainer_container/requirements.txt", sha256_hex(recipe),
                 populate)


def code_layer(root: Path = PROJECT_ROOT) -> Layer:
    plain = packages_layer(root, CODE_PACKAGES, TRAINER_WORKING_DIR)

    def populate(staging: Path) -> None:
        plain.populate(staging)
        _compile(staging / TRAINER_WORKING_DIR.strip("/"), staging)

    return Layer(plain.comment + " (byte-compiled)", plain.inputs, populate)


def image_config() -> ImageConfig:
    return ImageConfig(env=TRAINER_IMAGE_ENV, entrypoint=ENTRYPOINT, working_dir=TRAINER_WORKING_DIR, user="trainer")


def trainer_layers(root: Path = PROJECT_ROOT) -> list[Layer]:
    return [base_layer(), dependencies_layer(root / "trainer_container" / "requirements.txt"), code_layer(root)]


def first_build_pending(cache_dir: Path | None = None, root: Path = PROJECT_ROOT) -> bool:
    """True when the slow layers (base, dependencies: about 6 minutes) are not in the cache yet;
    a code change alone rebuilds in about a second."""
    return bool(uncached_layers([base_layer(), dependencies_layer(root / "trainer_container" / "requirements.txt")],
                                cache_dir))


def build_trainer_image(tag: str = "latest", cache_dir: Path | None = None, root: Path = PROJECT_ROOT,
                        progress: Callable[[str], None] | None = None) -> BuiltImage:
    """The trainer's OCI layout (from the machine's image cache when its inputs are unchanged)."""
    return build(trainer_layers(root), image_config(), tag=tag, cache_dir=cache_dir, progress=progress)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.trainer_image")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("build", help="build (or find in the cache) the trainer's OCI image layout")
    command.add_argument("--tag", default="latest")
    command.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    image = build_trainer_image(args.tag, args.cache_dir, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"layout": str(image.layout), "tag": image.tag, "digest": image.digest,
                      "layers": list(image.layers), "seconds": round(time.monotonic() - started, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
