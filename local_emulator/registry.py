"""Twin of a container registry and of a node's image pull: OCI image layouts on disk, pulled
by digest, verified, unpacked once.

A registry is a folder: `<root>/<repository>/` is an OCI image layout (what
tools/oci_image.py writes and `skopeo copy ... oci:<dir>` reads), and its host name is
`LOCAL_REGISTRY` (`.localhost` names are loopback by RFC 6761: no real registry has it). An
image is named `<registry>/<repository>@sha256:<manifest digest>`; a tag is never pulled.

`pull` is what a node does before it starts a container: the manifest's bytes must hash to
the digest the reference names, the config's and every layer's bytes to the digests the
manifest names (any mismatch is the pull failure ARM reports as InaccessibleImage), and the
config's diff_ids must be the layers (uncompressed tars, as our builder writes them). Each
layer is unpacked once, by its digest, into a folder of the node's layer cache (a layer shared
by images is unpacked once); the root filesystem of a container is those folders stacked
(overlayfs, base lowest) under a writable layer of its own (local_emulator/group_isolation.py
mounts it). A cached layer keeps the size and mtime its blob had when it was verified: a blob
changed since is hashed again before the layer is used.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOCAL_REGISTRY = "registry.ccr.localhost"
LAYER_MEDIA_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_LIMIT = 4 << 20
REFERENCE = re.compile(r"^(?P<registry>[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?)/"
                       r"(?P<repository>[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*)"
                       r"@sha256:(?P<hex>[0-9a-f]{64})$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class PullError(LookupError):
    """The image cannot be pulled (unknown, or not what its digests say)."""

    code = "InaccessibleImage"


@dataclass(frozen=True)
class PulledImage:
    reference: str
    digest: str                      # the manifest's "sha256:<hex>"
    layers: tuple[Path, ...]         # unpacked layer folders, base first
    config: dict                     # the image config's "config" section (Env, WorkingDir, Entrypoint, ...)


def is_registry_reference(reference: str) -> bool:
    return bool(REFERENCE.match(reference or ""))


def default_layer_cache() -> Path:
    configured = os.environ.get("CCR_LAYER_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ccr" / "layers"


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return f"sha256:{sha.hexdigest()}"


class LocalRegistry:
    """`push` a built OCI layout under a repository; `pull` a reference into unpacked layers."""

    def __init__(self, root: Path, layer_cache: Path | None = None, host: str = LOCAL_REGISTRY):
        self.root, self.host = Path(root), host
        self.layer_cache = Path(layer_cache or default_layer_cache())

    # --- push (what `skopeo copy oci:<layout> docker://<registry>/<repository>` does) ------

    def push(self, layout: Path, repository: str, tag: str = "latest") -> str:
        """Copy the image a layout's index names `tag` into `repository`; its reference by digest."""
        index = json.loads((Path(layout) / "index.json").read_text())
        [entry] = [m for m in index["manifests"]
                   if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
        target = self.root / repository
        blobs = target / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        manifest = json.loads((Path(layout) / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]).read_bytes())
        for digest in [entry["digest"], manifest["config"]["digest"], *(l["digest"] for l in manifest["layers"])]:
            source = Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]
            _place(source, blobs / source.name)
        (target / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        with open(target / "index.lock", "a+") as lock:   # concurrent pushes to a repository keep every tag
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = json.loads((target / "index.json").read_text())
            except FileNotFoundError:
                current = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
            current["manifests"] = [m for m in current["manifests"]
                                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag] + [entry]
            with tempfile.NamedTemporaryFile("w", dir=target, delete=False) as tmp:
                json.dump(current, tmp, sort_keys=True, separators=(",", ":"))
            os.replace(tmp.name, target / "index.json")
        return f"{self.host}/{repository}@{entry['digest']}"

    # --- pull ----------------------------------------------------------------------------

    def _blob(self, repository: str, digest: str, what: str, reference: str) -> Path:
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise PullError(f"{reference}: the {what} digest {digest!r} is not sha256:<64 hex>")
        path = self.root / repository / "blobs" / "sha256" / digest.split(":", 1)[1]
        if not path.is_file():
            raise PullError(f"{reference}: {what} {digest} not found in the registry (manifest unknown)"
                            if what == "manifest" else f"{reference}: {what} {digest} not found in the registry")
        return path

    def _verified_json(self, repository: str, digest: str, what: str, reference: str) -> dict:
        path = self._blob(repository, digest, what, reference)
        if path.stat().st_size > MANIFEST_LIMIT:
            raise PullError(f"{reference}: the {what} is larger than {MANIFEST_LIMIT} bytes")
        data = path.read_bytes()
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise PullError(f"{reference}: {what} digest mismatch (expected {digest}, got {actual})")
        try:
            document = json.loads(data)
        except ValueError:
            raise PullError(f"{reference}: the {what} is not JSON") from None
        if not isinstance(document, dict):
            raise PullError(f"{reference}: the {what} is not a JSON object")
        return document

    def pull(self, reference: str) -> PulledImage:
        match = REFERENCE.match(reference or "")
        if not match:
            raise PullError(f"image reference {reference!r} is not <registry>/<repository>@sha256:<hex>")
        if match.group("registry") != self.host:
            raise PullError(f"{reference}: registry {match.group('registry')} is not reachable from this twin "
                            f"(it serves {self.host})")
        repository, digest = match.group("repository"), f"sha256:{match.group('hex')}"
        manifest = self._verified_json(repository, digest, "manifest", reference)
        if manifest.get("schemaVersion") != 2 or manifest.get("mediaType", MANIFEST_MEDIA_TYPE) != MANIFEST_MEDIA_TYPE:
            raise PullError(f"{reference}: not an OCI image manifest (an index or another schema)")
        config_descriptor, layer_descriptors = manifest.get("config") or {}, manifest.get("layers")
        if not isinstance(layer_descriptors, list) or not layer_descriptors:
            raise PullError(f"{reference}: the manifest lists no layers")
        config = self._verified_json(repository, config_descriptor.get("digest"), "config", reference)
        if config.get("os") != "linux" or config.get("architecture") != "amd64":
            raise PullError(f"{reference}: the image is not linux/amd64")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        layer_digests = [d.get("digest") for d in layer_descriptors]
        for descriptor in layer_descriptors:
            if descriptor.get("mediaType") not in LAYER_MEDIA_TYPES:
                raise PullError(f"{reference}: layer media type {descriptor.get('mediaType')!r} is not supported "
                                f"(this twin pulls uncompressed tar layers)")
        if diff_ids != layer_digests:
            raise PullError(f"{reference}: the config's diff_ids are not the manifest's layers")
        layers = tuple(self._layer(repository, d["digest"], d.get("size"), reference) for d in layer_descriptors)
        return PulledImage(reference, digest, layers, config.get("config") or {})

    def _layer(self, repository: str, digest: str, size, reference: str) -> Path:
        """The unpacked folder of a verified layer (unpacked now if the cache lacks it)."""
        blob = self._blob(repository, digest, "layer", reference)
        info = blob.stat()
        if size != info.st_size:
            raise PullError(f"{reference}: layer {digest} size mismatch (manifest {size}, blob {info.st_size})")
        hex_digest = digest.split(":", 1)[1]
        self.layer_cache.mkdir(parents=True, exist_ok=True)
        folder, record_path = self.layer_cache / hex_digest, self.layer_cache / f"{hex_digest}.json"
        seen = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino, "device": info.st_dev}
        with open(self.layer_cache / f"{hex_digest}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = json.loads(record_path.read_text())
            except (FileNotFoundError, ValueError):
                record = None
            if record is not None and folder.is_dir():
                if record["blob"] != seen:            # another blob file, or changed since: hash it again
                    actual = _hash_file(blob)
                    if actual != digest:
                        raise PullError(f"{reference}: layer digest mismatch (expected {digest}, got {actual})")
                    record_path.write_text(json.dumps({"blob": seen}))
                return folder
            shutil.rmtree(folder, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(dir=self.layer_cache, prefix=f".{hex_digest[:12]}-"))
            try:
                actual = _unpack(blob, staging)
                if actual != digest:
                    raise PullError(f"{reference}: layer digest mismatch (expected {digest}, got {actual})")
                os.chmod(staging, 0o755)
                os.replace(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            record_path.write_text(json.dumps({"blob": seen}))
        return folder


class _HashingReader:
    def __init__(self, handle):
        self._handle, self.sha = handle, hashlib.sha256()

    def read(self, size=-1) -> bytes:
        data = self._handle.read(size)
        self.sha.update(data)
        return data


def _place(source: Path, destination: Path) -> None:
    """`source` at `destination` whole or not at all (a hard link, else a copy renamed into
    place), so a pull running beside a push never reads a blob half written."""
    if destination.exists():
        return
    staging = destination.with_name(f".{destination.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        try:
            os.link(source, staging)
        except OSError:
            shutil.copyfile(source, staging)
        os.replace(staging, destination)
    finally:
        staging.unlink(missing_ok=True)


def _inside(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """tarfile's `tar` filter checks (no absolute path, nothing outside `destination`, also not
    through a symlink unpacked earlier), keeping the member's modes (setuid and sticky bits too)."""
    tarfile.tar_filter(member, destination)
    return member


def _unpack(blob: Path, destination: Path) -> str:
    """Unpack a layer tar into `destination` while hashing it: "sha256:<hex>" of the bytes read
    (all of them). Owners and modes are kept (a root filesystem), paths stay inside, device
    nodes are skipped; OCI whiteouts become overlayfs whiteouts."""
    with blob.open("rb") as handle:
        reader = _HashingReader(handle)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                name = os.path.normpath(member.name.lstrip("/"))
                if name.startswith("..") or name == ".":
                    if name == ".":
                        continue
                    raise PullError(f"layer entry {member.name!r} leaves the root filesystem")
                parent, base = os.path.split(name)
                if base == ".wh..wh..opq":
                    folder = destination / parent
                    folder.mkdir(parents=True, exist_ok=True)
                    os.setxattr(folder, "trusted.overlay.opaque", b"y")
                    continue
                if base.startswith(".wh."):
                    (destination / parent).mkdir(parents=True, exist_ok=True)
                    os.mknod(destination / parent / base[4:], stat.S_IFCHR | 0o000, os.makedev(0, 0))
                    continue
                if member.isdev() or member.isfifo():
                    continue
                member.name = name
                if member.islnk():
                    member.linkname = os.path.normpath(member.linkname.lstrip("/"))
                tar.extract(member, destination, set_attrs=True, numeric_owner=True, filter=_inside)
        while reader.read(1 << 20):
            pass
    return f"sha256:{reader.sha.hexdigest()}"
