"""Local stand-in for a container registry: content-addressed trainer "images".

An image is a deterministic tar of the trainer's packages (`trainer_container/` and
`shared/`): sorted entries, fixed mtimes, owners and modes, no bytecode, so the same source
always gives the same sha256 and any changed byte gives another. Archives live under
`<images_dir>/sha256-<hex>.tar`; `index.json` maps tags (`ccr-trainer:<tag>`) to digests.

    python -m local_emulator.images build [--tag latest] [--images-dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from shared import settings
from shared.container_group import TRAINER_IMAGE_NAME

TRAINER_PACKAGES = ("trainer_container", "shared")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")
_BY_DIGEST = re.compile(r"^(?P<name>[a-z0-9._/-]+)@sha256:(?P<hex>[0-9a-f]{64})$")
_BY_TAG = re.compile(r"^(?P<name>[a-z0-9._/-]+):(?P<tag>[A-Za-z0-9._-]+)$")


class ImageError(LookupError):
    """An image that is unknown, missing or not what its digest says."""


@dataclass(frozen=True)
class Image:
    name: str
    digest: str          # "sha256:<hex>"
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.digest}"


def default_images_dir() -> Path:
    return settings.emulator_dir() / "images"


def _files(root: Path, packages: Sequence[str]) -> list[Path]:
    files = []
    for package in packages:
        base = root / package
        if not base.is_dir():
            raise ImageError(f"package directory {package!r} not found under {root}")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
            files += [Path(dirpath) / f for f in filenames if not f.endswith(SKIPPED_SUFFIXES)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def archive_bytes(root: Path, packages: Sequence[str] = TRAINER_PACKAGES) -> bytes:
    """The deterministic tar of `packages` under `root`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(root, packages):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def _index_path(images_dir: Path) -> Path:
    return images_dir / "index.json"


def read_index(images_dir: Path) -> dict[str, str]:
    try:
        return json.loads(_index_path(images_dir).read_text())
    except FileNotFoundError:
        return {}


def build_image(root: Path = settings.PROJECT_ROOT, packages: Sequence[str] = TRAINER_PACKAGES,
                images_dir: Path | None = None, tag: str = "latest", name: str = TRAINER_IMAGE_NAME) -> Image:
    """Archive the packages, store the archive by digest and point `<name>:<tag>` at it."""
    images_dir = Path(images_dir or default_images_dir())
    data = archive_bytes(Path(root), packages)
    hex_digest = hashlib.sha256(data).hexdigest()
    path = images_dir / f"sha256-{hex_digest}.tar"
    if not path.exists():
        _write_atomically(path, data)
    index = read_index(images_dir)
    index[f"{name}:{tag}"] = f"sha256:{hex_digest}"
    _write_atomically(_index_path(images_dir), json.dumps(index, indent=2, sort_keys=True).encode())
    return Image(name, f"sha256:{hex_digest}", path)


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def resolve(image_ref: str, images_dir: Path | None = None) -> Image:
    """The archive behind `name@sha256:<hex>` or `name:<tag>`, after checking that its
    content really hashes to the digest (a tampered archive is refused)."""
    images_dir = Path(images_dir or default_images_dir())
    by_digest = _BY_DIGEST.match(image_ref or "")
    if by_digest:
        name, hex_digest = by_digest.group("name"), by_digest.group("hex")
    else:
        by_tag = _BY_TAG.match(image_ref or "")
        if not by_tag:
            raise ImageError(f"image reference {image_ref!r} is neither name@sha256:<hex> nor name:<tag>")
        name = by_tag.group("name")
        digest = read_index(images_dir).get(image_ref)
        if not digest:
            raise ImageError(f"image {image_ref} is not in the local image index")
        hex_digest = digest.split(":", 1)[1]
    path = images_dir / f"sha256-{hex_digest}.tar"
    if not path.is_file():
        raise ImageError(f"image {name}@sha256:{hex_digest} not found in the local image store")
    actual = _file_digest(path)
    if actual != hex_digest:
        raise ImageError(f"image {name}@sha256:{hex_digest}: content digest does not match (sha256:{actual})")
    return Image(name, f"sha256:{hex_digest}", path)


def extract(image: Image, destination: Path) -> Path:
    """Unpack an image into `destination` (regular files only, no paths outside it)."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(image.path) as tar:
        tar.extractall(destination, filter="data")
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_emulator.images")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="archive trainer_container/ + shared/ as a trainer image")
    build.add_argument("--tag", default="latest")
    build.add_argument("--images-dir", type=Path, default=None)
    build.add_argument("--root", type=Path, default=settings.PROJECT_ROOT)
    args = parser.parse_args(argv)
    image = build_image(args.root, images_dir=args.images_dir, tag=args.tag)
    print(image.ref)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
