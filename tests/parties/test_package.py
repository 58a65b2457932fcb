"""The encrypted package format: round trips at every segment boundary, the manifest readable
without the key, and every kind of tampering refused with no plaintext left behind."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import blake3
import pytest

from shared import package
from shared.package import (SEGMENT_SIZE, TAG_SIZE, PackageError, TamperedPackage, TruncatedPackage,
                            UnsupportedVersion, WrongKey)

KEY = bytes(range(32))
KID = "https://vault.test/keys/icmr/0123"
SCHEMA = {"columns": ["pseudonym", "age"]}
SIZES = [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE, 4 * SEGMENT_SIZE + 12345]
V1_PACKAGE = Path(__file__).parent / "data" / "v1_package.ccr"  # written by the version-1-only code (76fb9ff)


def _committed(version: int, data: bytes, content_type: str = "text/csv", schema=SCHEMA) -> package.Manifest:
    hashed = hashlib.sha256(data) if version == 1 else blake3.blake3(data)
    return package.Manifest.committed(package.COMMITMENTS[version], hashed.hexdigest(), len(data), content_type,
                                      schema)


def _encrypt_bytes(data: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    package.encrypt_stream(io.BytesIO(data), out, key, KID, "text/csv", SCHEMA)
    return out.getvalue()


def _files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_file_to_file(tmp_path, size, version):
    data = os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    arguments = {} if version == package.VERSION else {"version": version}
    manifest = package.encrypt_file(tmp_path / "plain", tmp_path / "p.ccr", KEY, KID, "text/csv", SCHEMA, **arguments)
    assert manifest == _committed(version, data)
    encrypted = (tmp_path / "p.ccr").read_bytes()
    header = package.read_header(encrypted)
    assert header.version == version and encrypted[6] == version
    segments = max(1, -(-size // SEGMENT_SIZE))
    assert len(encrypted) == len(header.raw) + size + segments * TAG_SIZE
    assert size < 16 or data[:4096] not in encrypted
    assert package.decrypt_file(tmp_path / "p.ccr", tmp_path / "out", KEY) == manifest
    assert (tmp_path / "out").read_bytes() == data
    assert _files_in(tmp_path) == {"plain", "p.ccr", "out"}


def test_large_file_round_trip_reads_through_the_map_in_constant_memory(tmp_path):
    """Larger than the span after which consumed pages of the map are dropped."""
    size = 2 * package._RELEASE_EVERY + 3 * SEGMENT_SIZE + 5
    block = os.urandom(SEGMENT_SIZE)
    with open(tmp_path / "plain", "wb") as out:
        for index in range(-(-size // SEGMENT_SIZE)):
            out.write(block[:min(SEGMENT_SIZE, size - index * SEGMENT_SIZE)] if index else os.urandom(SEGMENT_SIZE))
    manifest = package.encrypt_file(tmp_path / "plain", tmp_path / "p.ccr", KEY, KID, "application/octet-stream")
    assert manifest.size == size
    assert package.decrypt_file(tmp_path / "p.ccr", tmp_path / "out", KEY) == manifest
    assert blake3.blake3((tmp_path / "out").read_bytes()).hexdigest() == manifest.blake3
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()


def test_header_is_readable_without_the_key_from_bytes_or_a_stream():
    encrypted = _encrypt_bytes(b"a,b\n1,2\n")
    from_bytes = package.read_header(encrypted[:1 << 20])
    stream = io.BytesIO(encrypted)
    from_stream = package.read_header(stream)
    assert from_bytes == from_stream
    assert (from_bytes.version, from_bytes.key_id) == (2, KID)
    assert from_bytes.manifest.blake3 == blake3.blake3(b"a,b\n1,2\n").hexdigest()
    assert from_bytes.manifest.sha256 is None and from_bytes.manifest.pin() == {"blake3": from_bytes.manifest.blake3}
    assert from_bytes.manifest.schema == SCHEMA and from_bytes.manifest.size == 8
    assert stream.tell() == len(from_bytes.raw)


def test_an_in_memory_source_larger_than_the_release_stride_round_trips():
    """A seekable stream without a file (BytesIO: the inference plane encrypts its predictions
    from memory) has no mapping to release pages of, however far it was read before the rewind."""
    data = os.urandom(package._RELEASE_EVERY + SEGMENT_SIZE + 5)
    out, back = io.BytesIO(), io.BytesIO()
    package.encrypt_stream(io.BytesIO(data), out, KEY, KID, "application/octet-stream", None)
    package.decrypt_stream(io.BytesIO(out.getvalue()), back, KEY)
    assert back.getvalue() == data


def test_non_seekable_source_is_spooled_and_round_trips():
    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            return self.inner.readinto(memoryview(buffer)[:1000])  # short reads, like a pipe

    data = os.urandom(SEGMENT_SIZE + 77)
    out = io.BytesIO()
    manifest = package.encrypt_stream(Pipe(data), out, KEY, KID, "application/octet-stream", None,
                                      size_hint=len(data))
    plain = io.BytesIO()
    assert package.decrypt_stream(io.BytesIO(out.getvalue()), plain, KEY) == manifest
    assert plain.getvalue() == data


@pytest.fixture(scope="module")
def three_segments() -> bytes:
    return _encrypt_bytes(os.urandom(2 * SEGMENT_SIZE + 100))


def _segment_bounds(encrypted: bytes) -> list[tuple[int, int]]:
    header = package.read_header(encrypted)
    start, bounds = len(header.raw), []
    remaining = header.manifest.size
    for _ in range(header.segment_count):
        length = min(remaining, SEGMENT_SIZE) + TAG_SIZE
        bounds.append((start, start + length))
        start += length
        remaining -= SEGMENT_SIZE
    return bounds


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def _swap_first_two(data: bytes) -> bytes:
    (a0, a1), (b0, b1), _ = _segment_bounds(data)
    assert a1 - a0 == b1 - b0
    return data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:]


def _json_offset(data: bytes) -> int:
    return data.index(b'"manifest"')


TAMPERING = {
    "cut inside the last segment": (lambda d: d[:-10], TruncatedPackage),
    "last segment dropped": (lambda d: d[:_segment_bounds(d)[-1][0]], TruncatedPackage),
    "all segments dropped": (lambda d: d[:_segment_bounds(d)[0][0]], TruncatedPackage),
    "cut inside the header": (lambda d: d[:20], TruncatedPackage),
    "segments reordered": (_swap_first_two, TamperedPackage),
    "bit flip in first segment": (lambda d: _flip(d, _segment_bounds(d)[0][0] + 5), TamperedPackage),
    "bit flip in middle segment": (lambda d: _flip(d, _segment_bounds(d)[1][0] + 999), TamperedPackage),
    "bit flip in a tag": (lambda d: _flip(d, _segment_bounds(d)[2][1] - 1), TamperedPackage),
    "bit flip in the salt": (lambda d: _flip(d, 11), TamperedPackage),
    "bit flip in the nonce prefix": (lambda d: _flip(d, 11 + 32 + 3), TamperedPackage),
    "bit flip in the manifest": (lambda d: _flip(d, _json_offset(d) + 30), TamperedPackage),
    "manifest size inflated": (lambda d: d.replace(b'"size":2097252', b'"size":9097252'), TamperedPackage),
    "key id replaced": (lambda d: d.replace(b"icmr", b"cwin"), TamperedPackage),
    "trailing garbage": (lambda d: d + b"\x00", TamperedPackage),
    "format version 3": (lambda d: d[:6] + b"\x03" + d[7:], UnsupportedVersion),
    "downgraded to version 1": (lambda d: d[:6] + b"\x01" + d[7:], TamperedPackage),
    "downgraded to version 1, manifest relabelled sha256":
        (lambda d: (d[:6] + b"\x01" + d[7:]).replace(b'"blake3"', b'"sha256"', 1), TamperedPackage),
    "commitment relabelled sha256": (lambda d: d.replace(b'"blake3"', b'"sha256"', 1), TamperedPackage),
    "format version 0": (lambda d: d[:6] + b"\x00" + d[7:], UnsupportedVersion),
    "not a package": (lambda d: b"PK\x03\x04" + d[4:], PackageError),
    "key check altered": (lambda d: _flip(d, 11 + 32 + 7), WrongKey),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_is_refused_and_leaves_no_plaintext(tmp_path, three_segments, case):
    alter, expected = TAMPERING[case]
    assert alter(three_segments) != three_segments
    (tmp_path / "bad.ccr").write_bytes(alter(three_segments))
    with pytest.raises(expected) as raised:
        package.decrypt_file(tmp_path / "bad.ccr", tmp_path / "out.csv", KEY)
    assert "Traceback" not in str(raised.value) and KEY.hex() not in str(raised.value)
    assert _files_in(tmp_path) == {"bad.ccr"}
    with pytest.raises(expected):  # the same from an in-memory stream (no memory map)
        package.decrypt_stream(io.BytesIO(alter(three_segments)), io.BytesIO(), KEY)


def test_the_untampered_fixture_decrypts(tmp_path, three_segments):
    (tmp_path / "good.ccr").write_bytes(three_segments)
    assert package.decrypt_file(tmp_path / "good.ccr", tmp_path / "out", KEY).size == 2 * SEGMENT_SIZE + 100


def test_wrong_key_is_reported_and_existing_destination_kept(tmp_path, three_segments):
    (tmp_path / "p.ccr").write_bytes(three_segments)
    (tmp_path / "out").write_bytes(b"previous content")
    with pytest.raises(WrongKey):
        package.decrypt_file(tmp_path / "p.ccr", tmp_path / "out", bytes(32))
    assert (tmp_path / "out").read_bytes() == b"previous content"
    assert _files_in(tmp_path) == {"p.ccr", "out"}


def test_content_that_does_not_match_its_manifest_is_refused(tmp_path):
    """A source that changes between the digest pass and the encryption pass (same length)
    yields a package whose segments authenticate but whose digest does not: refused."""
    class Changing(io.BytesIO):
        def seek(self, *args):
            self.getbuffer()[0] ^= 0xFF
            return super().seek(*args)

    out = io.BytesIO()
    package.encrypt_stream(Changing(b"x" * 5000), out, KEY, KID, "text/csv")
    (tmp_path / "p.ccr").write_bytes(out.getvalue())
    with pytest.raises(TamperedPackage, match="digest differs"):
        package.decrypt_file(tmp_path / "p.ccr", tmp_path / "out", KEY)
    assert _files_in(tmp_path) == {"p.ccr"}


def test_source_changing_length_during_encryption_is_refused(tmp_path):
    class Growing(io.BytesIO):
        def seek(self, *args):
            position = super().seek(*args)
            super().seek(0, io.SEEK_END)
            self.write(b"extra" * 10)
            return super().seek(position)

    with pytest.raises(PackageError, match="changed"):
        package.encrypt_stream(Growing(b"y" * 100), io.BytesIO(), KEY, KID, "text/csv")


@pytest.mark.parametrize("kwargs, message", [
    ({"key": b"short"}, "32 bytes"),
    ({"key_id": ""}, "key_id"),
    ({"content_type": ""}, "content_type"),
    ({"schema": ["not", "an", "object"]}, "schema"),
])
def test_bad_encrypt_arguments_write_nothing(tmp_path, kwargs, message):
    (tmp_path / "plain").write_bytes(b"data")
    arguments = {"key": KEY, "key_id": KID, "content_type": "text/csv", "schema": None} | kwargs
    with pytest.raises(ValueError, match=message):
        package.encrypt_file(tmp_path / "plain", tmp_path / "p.ccr", **arguments)
    assert _files_in(tmp_path) == {"plain"}


def test_packages_of_the_same_plaintext_differ():
    data = b"same plaintext" * 100
    first, second = _encrypt_bytes(data), _encrypt_bytes(data)
    assert first != second
    assert package.read_header(first).manifest == package.read_header(second).manifest


def test_a_version_1_package_written_by_the_old_code_still_decrypts(tmp_path):
    """Packages published before version 2 (SHA-256 manifest) stay readable."""
    plain = b"pseudonym,age\n" + b"".join(b"P%05d,%d\n" % (i, 20 + i % 60) for i in range(300))
    header = package.read_header(V1_PACKAGE.read_bytes())
    assert header.version == 1 and header.manifest.pin() == {"sha256": hashlib.sha256(plain).hexdigest()}
    assert package.decrypt_file(V1_PACKAGE, tmp_path / "out.csv", KEY) == _committed(1, plain)
    assert (tmp_path / "out.csv").read_bytes() == plain
    flipped = bytearray(V1_PACKAGE.read_bytes())
    flipped[-20] ^= 0x01
    with pytest.raises(TamperedPackage):
        package.decrypt_stream(io.BytesIO(bytes(flipped)), io.BytesIO(), KEY)


def test_a_version_1_header_cannot_carry_the_version_2_commitment():
    """The manifest's field is the hash's name: a version-1 header naming blake3 is malformed,
    and so is a version-2 one naming sha256 (the tampering cases above refuse both)."""
    document = {"blake3": "ab" * 32, "size": 1, "content_type": "text/csv", "schema": None}
    assert package.Manifest.from_dict(document, 2).blake3 == "ab" * 32
    with pytest.raises(TamperedPackage):
        package.Manifest.from_dict(document, 1)
    with pytest.raises(TamperedPackage):
        package.Manifest.from_dict({**document, "sha256": "ab" * 32}, 2)


def test_a_contract_pin_matches_only_its_own_commitment():
    data = b"a,b\n1,2\n"
    v2, v1 = _committed(2, data), _committed(1, data)
    assert v2.matches({"blob": "datasets/x.ccr", "blake3": v2.blake3}) and v1.matches({"sha256": v1.sha256})
    assert not v2.matches({"blake3": _committed(2, data + b"3,4\n").blake3})  # another package
    assert not v2.matches({"sha256": v1.sha256})  # the same data committed with the other hash
    assert not v1.matches({"blake3": v2.blake3})
    assert not v2.matches({"blake3": v2.blake3, "sha256": v1.sha256})  # two pins: neither is taken
    assert not v2.matches({"blake3": v2.blake3.upper()}) and not v2.matches({})
