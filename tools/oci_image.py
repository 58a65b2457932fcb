"""Build an OCI image layout without a container engine, cached by the hash of its inputs.

An image is a list of layers, each a recipe (`Layer`: what it is made of, as a fingerprint,
and a function that fills an empty staging folder with the files it adds), plus an image
config (Env, Entrypoint, Cmd, WorkingDir, User). `build()` writes the OCI image layout
(image-spec v1.1: `oci-layout`, `index.json`, `blobs/sha256/<hex>`), every layer an
uncompressed tar (`application/vnd.oci.image.layer.v1.tar`: no CPU spent on gzip, and the
layer digest is its diff_id). Tars are deterministic: entries sorted, mtimes fixed, owners
numeric, no user or group names, no device nodes; JSON documents are canonical (sorted keys,
no spaces). So `skopeo inspect oci:<dir>` reports the manifest digest we computed, and
`skopeo copy oci:<dir>:<tag> docker://<registry>/<repository>:<tag>` pushes that digest.

The cache (`default_cache_dir()`, ~/.cache/ccr/images unless CCR_IMAGE_CACHE says otherwise,
outside any clone so every clone on the machine shares it):

    layers/<layer inputs hash>.json      which blob a layer recipe produced
    blobs/sha256/<hex>                   layer blobs, shared by every image that has them
    images/<image inputs hash>/          one OCI layout per image (blobs hard-linked)

A layer is rebuilt only when its own inputs change (the trainer's code layer changes often,
its dependencies rarely, its base almost never); an image whose inputs hash is there costs a
read of two small JSON files.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

BUILDER_VERSION = "1"          # bump when the tar or JSON format changes: every cached image is rebuilt
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
FIXED_MTIME = 0
EPOCH = "1970-01-01T00:00:00Z"
SKIPPED_NAMES = frozenset({"__pycache__", ".pytest_cache"})


class ImageBuildError(RuntimeError):
    """A recipe that could not be built."""


@dataclass(frozen=True)
class Layer:
    """One layer's recipe: `inputs` fingerprints everything it is made of (a change means a
    new layer); `populate(staging)` writes the files the layer adds into an empty folder."""
    comment: str
    inputs: str
    populate: Callable[[Path], None] = field(compare=False)


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = "/"
    user: str = ""


@dataclass(frozen=True)
class BuiltImage:
    layout: Path              # the OCI image layout folder
    tag: str
    digest: str               # "sha256:<hex>" of the manifest
    layers: tuple[str, ...]   # "sha256:<hex>" of each layer, base first

    def reference(self, registry_repository: str) -> str:
        """`<registry>/<repository>@sha256:<hex>`."""
        return f"{registry_repository}@{self.digest}"


# --- fingerprints -----------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(document) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _walk_files(base: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_NAMES)
        found += [Path(dirpath) / f for f in filenames if not f.endswith((".pyc", ".pyo"))]
    return sorted(found)


def tree_fingerprint(root: Path, packages: Sequence[str]) -> str:
    """sha256 over every file (path, executable bit, content) of `packages` under `root`."""
    digest = hashlib.sha256()
    for package in packages:
        for path in _walk_files(Path(root) / package):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(b"x" if os.access(path, os.X_OK) else b"-")
            digest.update(sha256_hex(path.read_bytes()).encode())
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    return sha256_hex(Path(path).read_bytes())


# --- layers -----------------------------------------------------------------------------


class _HashingWriter:
    """What tarfile writes to: hashes and counts on the way to `handle`."""

    def __init__(self, handle):
        self._handle, self.sha, self.size = handle, hashlib.sha256(), 0

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self.sha.update(data)
        self._handle.write(data)
        self.size += len(data)
        return len(data)


def _entries(staging: Path) -> list[Path]:
    """Every path under `staging`, parents before children, in byte order of the path."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames.sort()
        for name in dirnames + filenames:
            entries.append(Path(dirpath) / name)
    return sorted(entries, key=lambda p: p.relative_to(staging).as_posix().encode())


def write_layer_tar(staging: Path, handle) -> tuple[str, int]:
    """The deterministic tar of `staging`'s content into `handle`: ("sha256:<hex>", size).
    Regular files, folders, symlinks and hard links keep their modes and numeric owners;
    device nodes, fifos and sockets are left out (the runtime provides /dev)."""
    writer = _HashingWriter(handle)
    with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _entries(staging):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(staging).as_posix())
            if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                continue
            info.mtime = FIXED_MTIME
            info.uname = info.gname = ""
            info.pax_headers = {}
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return f"sha256:{writer.sha.hexdigest()}", writer.size


# --- the cache --------------------------------------------------------------------------


def default_cache_dir() -> Path:
    configured = os.environ.get("CCR_IMAGE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ccr" / "images"


class _Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("layers", "blobs/sha256", "images", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put_blob(self, data: bytes) -> tuple[str, int]:
        digest = f"sha256:{sha256_hex(data)}"
        path = self.blob(digest)
        if not path.exists():
            _write_atomically(path, data)
        return digest, len(data)

    def _layer_record(self, recipe: Layer) -> Path:
        key = sha256_hex(canonical_json([BUILDER_VERSION, recipe.comment, recipe.inputs]))
        return self.root / "layers" / f"{key}.json"

    def cached_layer(self, recipe: Layer) -> tuple[str, int] | None:
        """The blob `recipe` produced before, if the cache still holds it."""
        record_path = self._layer_record(recipe)
        if record_path.exists():
            record = json.loads(record_path.read_text())
            if self.blob(record["digest"]).exists():
                return record["digest"], record["size"]
        return None

    def layer(self, recipe: Layer) -> tuple[str, int]:
        """The blob `recipe` produces: from the cache, else built now."""
        cached = self.cached_layer(recipe)
        if cached is not None:
            return cached
        record_path = self._layer_record(recipe)
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as work:
            staging = Path(work) / "rootfs"
            staging.mkdir()
            os.chmod(staging, 0o755)
            recipe.populate(staging)
            with open(Path(work) / "layer.tar", "wb") as handle:
                digest, size = write_layer_tar(staging, handle)
            os.replace(Path(work) / "layer.tar", self.blob(digest))
        _write_atomically(record_path, canonical_json({"digest": digest, "size": size, "comment": recipe.comment}))
        return digest, size


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def image_inputs_hash(layers: Sequence[Layer], config: ImageConfig, tag: str) -> str:
    return sha256_hex(canonical_json([BUILDER_VERSION, [[l.comment, l.inputs] for l in layers],
                                      config.__dict__, tag]))


def uncached_layers(layers: Sequence[Layer], cache_dir: Path | None = None) -> list[Layer]:
    """The layers `build` would have to build (not in the cache): what a caller warns about."""
    cache = _Cache(Path(cache_dir or default_cache_dir()))
    return [recipe for recipe in layers if cache.cached_layer(recipe) is None]


def build(layers: Sequence[Layer], config: ImageConfig, tag: str = "latest",
          cache_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> BuiltImage:
    """The OCI layout of this image, from the cache when its inputs hash is there. `progress`
    hears a line as each layer is found in the cache or starts and ends building."""
    cache = _Cache(Path(cache_dir or default_cache_dir()))
    layout = cache.root / "images" / image_inputs_hash(layers, config, tag)
    done = _read_layout(layout, tag)
    if done is not None:
        return done
    with open(cache.root / ".lock", "a+") as lock:        # one builder at a time per cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = _read_layout(layout, tag)
        if done is not None:
            return done
        built = [_layer_with_progress(cache, recipe, f"layer {number}/{len(layers)}", progress)
                 for number, recipe in enumerate(layers, 1)]
        image_config = {
            "created": EPOCH, "architecture": "amd64", "os": "linux",
            "config": _config_section(config),
            "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in built]},
            "history": [{"created": EPOCH, "created_by": recipe.comment} for recipe in layers]}
        config_digest, config_size = cache.put_blob(canonical_json(image_config))
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                    "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
                    "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size}
                               for digest, size in built]}
        manifest_digest, manifest_size = cache.put_blob(canonical_json(manifest))
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                 "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest, "size": manifest_size,
                                "annotations": {REF_NAME_ANNOTATION: tag}}]}
        staging = Path(tempfile.mkdtemp(dir=cache.root / "tmp"))
        (staging / "blobs" / "sha256").mkdir(parents=True)
        for digest in [d for d, _ in built] + [config_digest, manifest_digest]:
            target = staging / "blobs" / "sha256" / digest.split(":", 1)[1]
            if not target.exists():
                _link_or_copy(cache.blob(digest), target)
        (staging / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        (staging / "index.json").write_bytes(canonical_json(index))
        shutil.rmtree(layout, ignore_errors=True)
        os.replace(staging, layout)
    return BuiltImage(layout, tag, manifest_digest, tuple(d for d, _ in built))


def _layer_with_progress(cache: _Cache, recipe: Layer, name: str,
                         progress: Callable[[str], None] | None) -> tuple[str, int]:
    say = progress or (lambda _: None)
    cached = cache.cached_layer(recipe)
    if cached is not None:
        say(f"{name} cached: {recipe.comment}")
        return cached
    say(f"{name} building: {recipe.comment}")
    started = time.monotonic()
    digest, size = cache.layer(recipe)
    say(f"{name} built in {time.monotonic() - started:.0f} s ({size / 1e6:.0f} MB)")
    return digest, size


def _config_section(config: ImageConfig) -> dict:
    section = {"Env": list(config.env), "WorkingDir": config.working_dir}
    if config.entrypoint:
        section["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        section["Cmd"] = list(config.cmd)
    if config.user:
        section["User"] = config.user
    return section


def _read_layout(layout: Path, tag: str) -> BuiltImage | None:
    """The image a finished layout holds (its index names `tag`), else None."""
    try:
        index = json.loads((layout / "index.json").read_text())
        [entry] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag]
        digest = entry["digest"]
        manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())
    except (OSError, ValueError, KeyError):
        return None
    return BuiltImage(layout, tag, digest, tuple(layer["digest"] for layer in manifest["layers"]))


# --- recipes every image can use ------------------------------------------------------------


def copy_packages(root: Path, packages: Sequence[str], destination: Path) -> None:
    """Copy `packages` (folders under `root`) into `destination`, without bytecode or caches;
    files keep only their executable bit (0755 / 0644), folders are 0755."""
    for package in packages:
        for path in _walk_files(Path(root) / package):
            target = destination / path.relative_to(root)
            for parent in reversed(target.relative_to(destination).parents):
                folder = destination / parent
                if not folder.exists():
                    folder.mkdir()
                    os.chmod(folder, 0o755)
            shutil.copyfile(path, target)
            os.chmod(target, 0o755 if os.access(path, os.X_OK) else 0o644)


def packages_layer(root: Path, packages: Sequence[str], destination: str = "/app") -> Layer:
    """A layer holding `packages` from `root` under `destination` (the image's code)."""
    def populate(staging: Path) -> None:
        target = staging / destination.strip("/")
        target.mkdir(parents=True, exist_ok=True)
        for folder in [target, *target.parents]:
            if folder == staging or staging not in folder.parents:
                break
            os.chmod(folder, 0o755)
        copy_packages(root, packages, target)
    return Layer(f"COPY {' '.join(packages)} {destination}", tree_fingerprint(root, packages), populate)


def host_python_layer(python: str = "/usr/bin/python3.11", stdlib: str = "/usr/lib/python3.11",
                      stdlib_skip: Iterable[str] = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip",
                                                    "lib2to3", "pydoc_data", "dist-packages", "site-packages",
                                                    "distutils", "config-3.11-x86_64-linux-gnu")) -> Layer:
    """A small root filesystem that runs Python: this host's `python` binary at its path, the
    shared libraries it and its extension modules load (ldd, with the loader), its standard
    library without tests and tools, and `python3` / `python` links. For small test images."""
    stdlib_skip = tuple(sorted(stdlib_skip))

    def stdlib_files() -> list[Path]:
        listed = [Path(python)]
        for dirpath, dirnames, filenames in os.walk(stdlib):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_NAMES
                                 and not (Path(dirpath) == Path(stdlib) and d in stdlib_skip))
            listed += [Path(dirpath) / f for f in filenames if not f.endswith((".pyc", ".pyo"))]
        return listed

    def files() -> list[Path]:
        listed = stdlib_files()
        binaries = [p for p in listed if p == Path(python) or p.suffix == ".so"]
        done = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            for part in line.split():
                if part.startswith("/") and os.path.exists(part):
                    listed.append(Path(part))
        return sorted(set(listed))

    def populate(staging: Path) -> None:
        for source in files():
            _copy_host_path(source, staging)
        bin_dir = staging / Path(python).parent.relative_to("/")
        for alias in ("python3", "python"):
            if not (bin_dir / alias).exists():
                os.symlink(Path(python).name, bin_dir / alias)
        for folder in ("tmp", "proc", "dev", "etc"):
            (staging / folder).mkdir(exist_ok=True)
        os.chmod(staging / "tmp", 0o1777)

    fingerprint = hashlib.sha256(canonical_json(stdlib_skip))
    for path in stdlib_files():          # packaged files: a new package version changes size or mtime
        info = path.stat()
        fingerprint.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_mode}\n".encode())
    return Layer(f"host python {python} and its standard library", fingerprint.hexdigest(), populate)


def _copy_host_path(source: Path, staging: Path) -> None:
    """Copy one host file into `staging` at the same absolute path; symlinks on the way (e.g.
    /lib64 -> usr/lib64) are recreated as symlinks and followed to what they point to."""
    parts = source.relative_to("/").parts
    current = Path("/")
    for index, part in enumerate(parts):
        current = current / part
        target = staging / current.relative_to("/")
        if os.path.islink(current):
            if not os.path.lexists(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.readlink(current), target)
            resolved = Path(os.path.realpath(current)).joinpath(*parts[index + 1:])
            if resolved != source:
                _copy_host_path(resolved, staging)
            return
        if index == len(parts) - 1:
            if not os.path.lexists(target):
                shutil.copy2(current, target)
        elif not target.exists():
            target.mkdir()
            os.chmod(target, 0o755)
