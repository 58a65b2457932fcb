"""The encrypted package format (`.ccr`): streaming authenticated encryption of one file.

Construction: Tink's AES-GCM-HKDF streaming AEAD ("STREAM", Hoang, Reyhanitabar, Rogaway and
Vizár, CRYPTO 2015) on `cryptography`'s AES-256-GCM.

    header  = MAGIC "CCRPKG" | version u8 | body length u32 BE | body
    body    = salt (32) | nonce prefix (7) | key check (32) | JSON {"key_id", "manifest"}
    subkey  = HKDF-SHA256(ikm=data key, salt=salt, info="ccr-package/<version> segment key"), 32 bytes
    segment i = AES-256-GCM(subkey, nonce = prefix | i u32 BE | last-segment flag u8,
                            plaintext = 1 MiB (the last one 0..1 MiB), associated data = header)

Two format versions differ only in the manifest's commitment to the plaintext, which contracts
pin (a field named after the hash, docs/INTERFACES.md):

    version 1: manifest {"sha256": hex, "size", "content_type", "schema"}   (read only)
    version 2: manifest {"blake3": hex, "size", "content_type", "schema"}   (written by default)

Why version 2. SHA-256 runs at 0.2-0.4 GB/s on CPUs without SHA extensions and caps the
package there; BLAKE3 (the `blake3` package, the reference Rust implementation, SIMD and
multi-threaded with `max_threads`) runs several times faster on one core and splits across cores.

Why BLAKE3 binds the data as tightly as SHA-256. What the commitment must stop is a party that
holds the data key (the provider itself, or anyone it gave the key) swapping the plaintext after
the contract pinned its digest: that takes a second preimage or a collision of the hash over the
plaintext. Since the key holder also chooses the plaintext, collision resistance is the bound
that matters, and both hashes have 256-bit outputs and 128-bit collision resistance (BLAKE3
targets 128-bit security for every goal, second preimages included; SHA-256's nominal 256-bit
preimage margin adds nothing once a 128-bit collision bound limits the attacker). BLAKE3's
compression function is BLAKE2s's with 7 rounds instead of 10, for which the best published
attacks reach far fewer rounds, and its tree mode separates chunk,
parent and root nodes by flags and carries each chunk's counter, so a collision of the tree is a
collision of the compression function (O'Connor, Aumasson, Neves, Wilcox-O'Hearn, "BLAKE3",
2020). The digest does not depend on how many threads computed it. A commitment built instead
from the segments' GCM tags would NOT bind as tightly: GCM is not key-committing and its tag is
GHASH, a polynomial in the ciphertext blocks with key-derived coefficients, so whoever knows the
key can change ciphertext blocks and compensate to keep every tag (or build one ciphertext that
decrypts validly under two keys: Dodis, Grubbs, Ristenpart, Woodage, "Fast message franking",
CRYPTO 2018; Albertini et al., "How to abuse and fix authenticated encryption without key
commitment", USENIX Security 2022). A hash over tags binds only against parties without the key,
and the party we guard against has it.

No downgrade. The version byte and the manifest (whose digest field names the hash) are in the
header, and the header is the associated data of every segment, and each version derives its
own segment subkey: relabelling a version-2 package as version 1 (or its `blake3` as `sha256`)
fails authentication. A version-1 package re-made from other data by the key holder carries a
`sha256`, which a contract pinning `blake3` does not accept (`Manifest.matches`).

The whole header is the associated data of every segment, so the manifest (plaintext digest,
size, content type, schema) is readable without the key - the orchestration checks it against
the contract - yet any change to it fails the first segment. The segment counter in the nonce
detects reordering, the last-segment flag and the manifest size detect truncation (including
whole dropped segments), and bytes after the last segment are refused. The key check
(HKDF of the key alone, so it is the same for every package of one key) lets a wrong key be
reported as such instead of as tampering; it also commits the package to one key.
Decryption verifies the plaintext digest against the manifest as it goes (on a second thread,
while a third writes the plaintext and the next segment is decrypted), so a package whose
content does not match its authenticated manifest is refused.

Where the time goes (bench/crypto_throughput.py, 1 GiB in a tmpfs, this 2-core AMD EPYC with
the SHA extensions masked; CPU seconds per GB of each pipeline thread, measured with
thread_time): AES-256-GCM with the faults of the mapped source 0.45-0.65 (AES alone 0.3-0.4),
BLAKE3 0.3-0.4 on one thread, the encryption's hashing pass 0.5-0.7 (BLAKE3 on both cores and
the source's faults), writing the output into a tmpfs file 0.45-0.6 (the kernel allocates a
4 KiB page per 4 KiB and copies into it; the allocation alone, as posix_fallocate, is 0.3-0.4
and writing into allocated pages 0.2-0.25, so allocating up front saved nothing and, done
before the work, held up every stage for 0.35-0.45 s/GB: dropped). Encrypt uses 1.6-1.9
CPU-s/GB and decrypt 1.45-1.65. On two otherwise idle cores encrypt is its hashing pass
(0.36 s/GB) then its encryption pass (0.69 s/GB, bound by the thread doing AES-GCM and the
faults, the writer beside it), decrypt one pipeline of 0.87 s/GB (three stages of 0.55, 0.5 and
0.3 CPU-s/GB on two cores). Measured while other processes used under 0.15 of a core: encrypt
best 1.00, median 0.91 GB/s (with the up-front allocation 0.91, 0.75), decrypt best 1.27,
median 1.03 GB/s (1.07, 0.89); on a shared machine the figures fall with the share of the
cores left. Measured and not kept: a second writer thread (tmpfs writes to one file serialise
on its inode lock: no faster, more system time), a writable map of the output (twice the
system time of write), read() or MADV_POPULATE_READ/WILLNEED instead of the plain map for the
source and several segments per write call (none faster), the allocation overlapped with the
hashing pass (that pass already keeps both cores busy), and AES-GCM on two threads in the
encryption pass (that pass slower, 0.93 against 0.76 s/GB: the in-order writer waits on them).

Memory is constant: 1 MiB buffers, reused; file sources are read through a memory map whose
consumed pages are dropped as it goes (one copy fewer per byte, constant resident memory).
A file truncated by another process while it is mapped would end the process with SIGBUS:
packages are decrypted from files the caller owns (downloads, its own temporaries).
`decrypt_file` writes to a temporary file beside the destination and renames it only after
every segment, the final flag and the digest verified: no partial plaintext on any failure.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import os
import stat
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"CCRPKG"
VERSION = 2  # what new packages are written as
COMMITMENTS = {1: "sha256", 2: "blake3"}  # format version -> the manifest's plaintext hash
SEGMENT_SIZE = 1 << 20
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
KEY_CHECK_SIZE = 32
MAX_HEADER_SIZE = 256 * 1024
_PREAMBLE = struct.Struct(">6sBI")  # magic, version, body length
_NONCE_TAIL = struct.Struct(">IB")  # segment counter, last-segment flag
_FIXED_BODY = SALT_SIZE + NONCE_PREFIX_SIZE + KEY_CHECK_SIZE
_MAX_SEGMENTS = 2**32
_RELEASE_EVERY = 16 * SEGMENT_SIZE
_DECRYPT_BUFFERS = 8  # plaintext segments in flight: one being decrypted, others hashed and written
_ENCRYPT_BUFFERS = 4  # sealed segments in flight: one being encrypted, the others written
# (deep enough that a pipeline stage descheduled for a few milliseconds on a shared machine
# does not stall the others; 8 MiB at most)


class PackageError(ValueError):
    """Not a valid package for this key. Messages never contain key material or plaintext."""


class TruncatedPackage(PackageError):
    """The package ends before its last segment (or inside its header)."""


class TamperedPackage(PackageError):
    """A segment or the header failed authentication, segments are out of order, or
    bytes follow the last segment."""


class WrongKey(PackageError):
    """The key is not the one the package was encrypted with."""


class UnsupportedVersion(PackageError):
    """The header names a format version this code does not read."""


def _is_hex256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class Manifest:
    """What a package says of its plaintext. Exactly one commitment is set: `sha256` in a
    version-1 package, `blake3` in a version-2 one."""
    sha256: str | None
    size: int
    content_type: str
    schema: dict | None = None
    blake3: str | None = None

    def __post_init__(self):
        if (self.sha256 is None) == (self.blake3 is None):
            raise ValueError("a manifest carries exactly one commitment (sha256 or blake3)")

    @classmethod
    def committed(cls, algorithm: str, digest: str, size: int, content_type: str,
                  schema: dict | None = None) -> "Manifest":
        if algorithm not in COMMITMENTS.values():
            raise ValueError(f"unknown commitment {algorithm!r}")
        return cls(digest if algorithm == "sha256" else None, size, content_type, schema,
                   digest if algorithm == "blake3" else None)

    @property
    def algorithm(self) -> str:
        return "sha256" if self.sha256 is not None else "blake3"

    @property
    def digest(self) -> str:
        return self.sha256 if self.sha256 is not None else self.blake3

    @property
    def version(self) -> int:
        """The format version whose manifest carries this commitment."""
        return next(v for v, name in COMMITMENTS.items() if name == self.algorithm)

    def pin(self) -> dict:
        """The commitment as a contract entry pins it: {"sha256": hex} or {"blake3": hex}."""
        return {self.algorithm: self.digest}

    def matches(self, entry) -> bool:
        """Whether a contract entry (or anything carrying the pin's field) pins exactly this
        commitment: the same hash, named by its field, and no other commitment beside it."""
        return pinned_commitment(entry) == (self.algorithm, self.digest)

    def to_dict(self) -> dict:
        return {self.algorithm: self.digest, "size": self.size, "content_type": self.content_type,
                "schema": self.schema}

    @classmethod
    def from_dict(cls, data, version: int = 1) -> "Manifest":
        algorithm = COMMITMENTS[version]
        if not isinstance(data, dict) or set(data) != {algorithm, "size", "content_type", "schema"}:
            raise TamperedPackage("package manifest is malformed")
        digest, size, content_type, schema = data[algorithm], data["size"], data["content_type"], data["schema"]
        if (not _is_hex256(digest)
                or not isinstance(size, int) or isinstance(size, bool) or size < 0
                or size > SEGMENT_SIZE * _MAX_SEGMENTS
                or not isinstance(content_type, str) or not content_type
                or not (schema is None or isinstance(schema, dict))):
            raise TamperedPackage("package manifest is malformed")
        return cls.committed(algorithm, digest, size, content_type, schema)


def pinned_commitment(entry) -> tuple[str, str] | None:
    """The (hash name, hex digest) a contract entry pins - its one `sha256` (a version-1
    package) or `blake3` (version 2) field - or None when it has none, several, or a
    malformed digest."""
    if not isinstance(entry, dict):
        return None
    names = [name for name in COMMITMENTS.values() if name in entry]
    if len(names) != 1 or not _is_hex256(entry[names[0]]):
        return None
    return names[0], entry[names[0]]


def _hasher(version: int, threads: bool = True):
    """The manifest's hash for a format version. With `threads`, BLAKE3 splits each update
    across the cores (the digest is the same whatever the thread count): for encryption's
    first pass, where hashing is all there is to do; decryption hashes on a pipeline thread
    of its own beside the decryption and the write, where splitting each segment again only
    adds hand-offs. Both hashes release the GIL on large updates."""
    if version == 1:
        return hashlib.sha256()
    import blake3  # only version 2 needs it
    return blake3.blake3(max_threads=blake3.blake3.AUTO if threads else 1)


@dataclass(frozen=True)
class Header:
    version: int
    key_id: str
    manifest: Manifest
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    key_check: bytes = field(repr=False)
    raw: bytes = field(repr=False)  # the exact header bytes: associated data of every segment

    @property
    def segment_count(self) -> int:
        return max(1, -(-self.manifest.size // SEGMENT_SIZE))


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _key_check(key: bytes) -> bytes:
    return _hkdf(key, None, b"ccr-package/1 key check")


def _segment_aead(key: bytes, salt: bytes, version: int) -> AESGCM:
    return AESGCM(_hkdf(key, salt, f"ccr-package/{version} segment key".encode()))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + _NONCE_TAIL.pack(index, 1 if last else 0)


def _check_key(key) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise ValueError(f"a package key is {KEY_SIZE} bytes")
    return bytes(key)


def _build_header(key: bytes, key_id: str, manifest: Manifest) -> Header:
    version = manifest.version
    if not isinstance(key_id, str) or not key_id or len(key_id) > 2048:
        raise ValueError("key_id must be a non-empty string of at most 2048 characters")
    salt, prefix = os.urandom(SALT_SIZE), os.urandom(NONCE_PREFIX_SIZE)
    check = _key_check(key)
    document = json.dumps({"key_id": key_id, "manifest": manifest.to_dict()}, sort_keys=True,
                          separators=(",", ":")).encode()
    body = salt + prefix + check + document
    if _PREAMBLE.size + len(body) > MAX_HEADER_SIZE:
        raise ValueError(f"package header would exceed {MAX_HEADER_SIZE} bytes (schema too large)")
    raw = _PREAMBLE.pack(MAGIC, version, len(body)) + body
    return Header(version, key_id, manifest, salt, prefix, check, raw)


def _parse_header(preamble: bytes, body: bytes) -> Header:
    try:
        document = json.loads(body[_FIXED_BODY:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TamperedPackage("package header is malformed") from None
    if not isinstance(document, dict) or set(document) != {"key_id", "manifest"} \
            or not isinstance(document["key_id"], str) or not document["key_id"]:
        raise TamperedPackage("package header is malformed")
    version = preamble[len(MAGIC)]
    return Header(version, document["key_id"], Manifest.from_dict(document["manifest"], version),
                  body[:SALT_SIZE], body[SALT_SIZE:SALT_SIZE + NONCE_PREFIX_SIZE],
                  body[SALT_SIZE + NONCE_PREFIX_SIZE:_FIXED_BODY], preamble + body)


def _read_preamble(preamble: bytes) -> int:
    """Body length of a header, after checking magic and version."""
    if len(preamble) < _PREAMBLE.size:
        if MAGIC.startswith(preamble[:len(MAGIC)]):
            raise TruncatedPackage("package ends inside its header")
        raise PackageError("not a CCR package (bad magic)")
    magic, version, length = _PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise PackageError("not a CCR package (bad magic)")
    if version not in COMMITMENTS:
        raise UnsupportedVersion(f"package format version {version} is not supported (this code reads "
                                 f"{', '.join(map(str, COMMITMENTS))})")
    if length < _FIXED_BODY or _PREAMBLE.size + length > MAX_HEADER_SIZE:
        raise TamperedPackage("package header length is out of range")
    return length


def read_header(src: BinaryIO | bytes | bytearray | memoryview) -> Header:
    """The header of a package (version, key id, manifest), without the key. A stream is
    left positioned at the first segment. The header is authenticated only by decryption."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src[:MAX_HEADER_SIZE])
        length = _read_preamble(data[:_PREAMBLE.size])
        body = data[_PREAMBLE.size:_PREAMBLE.size + length]
    else:
        preamble = _read_exactly(src, _PREAMBLE.size)
        length = _read_preamble(preamble)
        body = _read_exactly(src, length)
        data = preamble
    if len(body) < length:
        raise TruncatedPackage("package ends inside its header")
    return _parse_header(data[:_PREAMBLE.size], body)


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = src.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _Source:
    """Segment-sized views of a stream: zero-copy slices of a read-only memory map when the
    stream is a regular file (saves one copy per byte), else `readinto` one reused buffer
    (short reads of pipes and sockets are retried). A view is valid until the next `take`."""

    def __init__(self, stream: BinaryIO, capacity: int):
        self._stream, self._start, self._map, self._view = stream, stream.tell(), None, None
        try:
            descriptor = stream.fileno()
            status = os.fstat(descriptor)
            if stat.S_ISREG(status.st_mode) and status.st_size > self._start:
                self._map = mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ)
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._map = None
        if self._map is not None:
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._view = memoryview(self._map)
        self._position, self._released = self._start, 0
        self._buffer = None if self._map is not None else memoryview(bytearray(capacity))

    def take(self, size: int) -> memoryview:
        if self._view is not None:
            self._forget_consumed()
            view = self._view[self._position:self._position + size]
            self._position += len(view)
            return view
        total, target = 0, self._buffer[:size]
        while total < size:
            count = self._stream.readinto(target[total:])
            if not count:
                break
            total += count
        self._position += total
        return target[:total]

    def _forget_consumed(self) -> None:
        """Drop pages already read from this process's mapping (the page cache keeps them),
        so resident memory stays constant however large the file."""
        done = self._position - self._position % mmap.PAGESIZE
        if done - self._released >= _RELEASE_EVERY:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
            self._released = done

    def rewind(self) -> None:
        if self._map is not None:  # a stream without a mapping (BytesIO, a pipe) has nothing to drop
            self._forget_consumed()
        self._released = 0
        self._position = self._start
        if self._view is None:
            self._stream.seek(self._start)

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc) -> None:
        if self._map is not None:
            self._view.release()
            try:
                self._map.close()
            except BufferError:  # a view is still referenced (e.g. by a traceback): closed when collected
                pass
            self._stream.seek(self._position)


def _write_all(dst: BinaryIO, view: memoryview) -> None:
    """`write` until done: raw (unbuffered) streams may accept part of a buffer."""
    while view:
        written = dst.write(view)
        view = view[len(view) if written is None else written:]


def _source_state(src: BinaryIO):
    """(size, mtime) of a file-backed source, to notice it changing between the two passes."""
    try:
        status = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return status.st_size, status.st_mtime_ns


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, key_id: str, content_type: str,
                   schema: dict | None = None, size_hint: int | None = None, version: int = VERSION) -> Manifest:
    """Encrypts `src` into `dst`. Two passes over the source (digest for the manifest, then
    encryption); a source that cannot seek is spooled to a temporary file first. `size_hint`,
    when given, must equal the source's size. `version` 1 (SHA-256 manifest) only for
    readers that predate version 2."""
    key = _check_key(key)
    if version not in COMMITMENTS:
        raise ValueError(f"package format version must be one of {', '.join(map(str, COMMITMENTS))}")
    if not src.seekable():
        with tempfile.TemporaryFile() as spool:
            while chunk := src.read(SEGMENT_SIZE):
                spool.write(chunk)
            spool.seek(0)
            return encrypt_stream(spool, dst, key, key_id, content_type, schema, size_hint, version)
    if not isinstance(content_type, str) or not content_type:
        raise ValueError("content_type must be a non-empty string")
    if schema is not None and not isinstance(schema, dict):
        raise ValueError("schema must be a JSON object or None")
    before = _source_state(src)
    with _Source(src, SEGMENT_SIZE) as source:
        digest, size = _hasher(version), 0
        while block := source.take(SEGMENT_SIZE):
            digest.update(block)
            size += len(block)
        if size_hint is not None and size_hint != size:
            raise ValueError(f"source is {size} bytes, not the {size_hint} announced")
        manifest = Manifest.committed(COMMITMENTS[version], digest.hexdigest(), size, content_type, schema)
        header = _build_header(key, key_id, manifest)
        source.rewind()
        _write_all(dst, memoryview(header.raw))
        aead = _segment_aead(key, header.salt, header.version)
        sealed_buffers = tuple(memoryview(bytearray(SEGMENT_SIZE + TAG_SIZE)) for _ in range(_ENCRYPT_BUFFERS))
        count = header.segment_count
        writes: list = [None] * _ENCRYPT_BUFFERS  # the write still reading each buffer
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccr-package-writer") as writer:
            # earlier segments are written (in order) while segment i is encrypted
            for index in range(count):
                last = index == count - 1
                expected = size - SEGMENT_SIZE * index if last else SEGMENT_SIZE
                plain = source.take(expected)
                if len(plain) != expected:
                    raise PackageError("source changed while it was being encrypted")
                slot = index % _ENCRYPT_BUFFERS
                _finish(writes[slot])  # this buffer is free again
                sealed = sealed_buffers[slot][:expected + TAG_SIZE]
                aead.encrypt_into(_nonce(header.nonce_prefix, index, last), plain, header.raw, sealed)
                writes[slot] = (writer.submit(_write_all, dst, sealed),)
            for pending in writes:
                _finish(pending)
        if source.take(1):
            raise PackageError("source changed while it was being encrypted")
    if _source_state(src) != before:
        raise PackageError("source changed while it was being encrypted")
    return manifest


def _finish(futures) -> None:
    """Waits for a buffer's readers, raising what they raised (a failed write)."""
    for future in futures or ():
        future.result()


def decrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes) -> Manifest:
    """Decrypts a package from `src` into `dst`, one verified segment at a time. On failure
    `dst` may hold verified segments of an incomplete plaintext: callers that write to a
    file use `decrypt_file`, which never leaves partial plaintext behind."""
    key = _check_key(key)
    header = read_header(src)
    if not hmac.compare_digest(_key_check(key), header.key_check):
        raise WrongKey("the key does not match this package (wrong key, or its key check was altered)")
    aead, size, count = _segment_aead(key, header.salt, header.version), header.manifest.size, header.segment_count
    plains = tuple(memoryview(bytearray(SEGMENT_SIZE)) for _ in range(_DECRYPT_BUFFERS))
    readers: list[tuple | None] = [None] * _DECRYPT_BUFFERS  # the digest and the write still reading each buffer
    digest = _hasher(header.version, threads=False)
    # Segment i is hashed and written (two threads, each in order) while segment i+1 is decrypted.
    with _Source(src, SEGMENT_SIZE + TAG_SIZE) as source, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccr-package-digest") as hasher, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccr-package-writer") as writer:
        for index in range(count):
            last = index == count - 1
            expected = (size - SEGMENT_SIZE * index if last else SEGMENT_SIZE) + TAG_SIZE
            sealed = source.take(expected)
            if len(sealed) != expected:
                raise TruncatedPackage(f"package ends inside or before segment {index} of {count}")
            slot = index % _DECRYPT_BUFFERS
            _finish(readers[slot])  # this buffer is free again
            plain = plains[slot][:expected - TAG_SIZE]
            try:
                aead.decrypt_into(_nonce(header.nonce_prefix, index, last), sealed, header.raw, plain)
            except InvalidTag:
                raise TamperedPackage(f"segment {index} of {count} failed authentication "
                                      "(altered, reordered or truncated package)") from None
            readers[slot] = (hasher.submit(digest.update, plain), writer.submit(_write_all, dst, plain))
        for pending in readers:
            _finish(pending)
        if source.take(1):
            raise TamperedPackage("unexpected bytes after the last segment")
    if digest.hexdigest() != header.manifest.digest:
        raise TamperedPackage("plaintext digest differs from the package manifest")
    return header.manifest


def _atomic_output(dst_path: Path, write) -> Manifest:
    """Runs `write(file)` on a temporary file beside `dst_path`; renames it into place only
    if `write` returns, removes it otherwise. Nothing is allocated up front: on a tmpfs an
    up-front posix_fallocate costs the same CPU as the page allocation the writes do, but it
    ran alone before any other stage, where the writer thread allocates beside them."""
    dst_path = Path(dst_path)
    handle = tempfile.NamedTemporaryFile(dir=dst_path.parent, prefix=f".{dst_path.name}.", suffix=".part",
                                         delete=False)
    try:
        with handle:
            result = write(handle)
        os.replace(handle.name, dst_path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return result


def encrypt_file(src_path, dst_path, key: bytes, key_id: str, content_type: str,
                 schema: dict | None = None, version: int = VERSION) -> Manifest:
    """Encrypts a file into a package file (written atomically)."""
    with open(src_path, "rb", buffering=0) as src:
        return _atomic_output(dst_path, lambda dst: encrypt_stream(src, dst, key, key_id, content_type, schema,
                                                                   version=version))


def decrypt_file(src_path, dst_path, key: bytes) -> Manifest:
    """Decrypts a package file; the destination appears only once everything verified."""
    with open(src_path, "rb", buffering=0) as src:
        return _atomic_output(dst_path, lambda dst: decrypt_stream(src, dst, key))
