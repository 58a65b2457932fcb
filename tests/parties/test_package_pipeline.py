"""The package's pipelines keep several segments in flight (encryption writes earlier segments
while it encrypts the next; decryption hashes and writes while it decrypts): a destination
that fails mid-way stops the operation with its own error, and one that takes part of each
write still receives every byte in order; a destination file that fills up part way (writes
allocate the file as they go) leaves no partial output behind."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import package
from shared.package import SEGMENT_SIZE

KEY = bytes(range(32))
SIZE = 12 * SEGMENT_SIZE + 4321  # more segments than either pipeline has buffers


class FailingSink(io.RawIOBase):
    """Accepts `limit` writes, then fails as a full disk does; counts the writes it was asked for."""

    def __init__(self, limit: int):
        self.limit, self.calls, self.kept = limit, 0, io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.calls += 1
        if self.calls > self.limit:
            raise OSError(28, "No space left on device")
        return self.kept.write(data)


class ShortWriter(io.RawIOBase):
    """A raw stream that takes at most 1000 bytes per call, as a pipe or socket may."""

    def __init__(self):
        self.kept = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.kept.write(bytes(memoryview(data)[:1000]))


@pytest.fixture(scope="module")
def plaintext() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture(scope="module")
def sealed(plaintext) -> bytes:
    out = io.BytesIO()
    package.encrypt_stream(io.BytesIO(plaintext), out, KEY, "key", "application/octet-stream")
    return out.getvalue()


def test_encryption_stops_with_the_destination_error_and_writes_no_further(plaintext):
    sink = FailingSink(limit=3)  # the header and two segments
    with pytest.raises(OSError, match="No space left"):
        package.encrypt_stream(io.BytesIO(plaintext), sink, KEY, "key", "application/octet-stream")
    assert sink.calls <= 4 + package._ENCRYPT_BUFFERS  # stopped within one pipeline's depth, not at the end


def test_decryption_stops_with_the_destination_error(sealed):
    sink = FailingSink(limit=2)
    with pytest.raises(OSError, match="No space left"):
        package.decrypt_stream(io.BytesIO(sealed), sink, KEY)
    assert sink.calls <= 3 + package._DECRYPT_BUFFERS


def test_short_writes_still_deliver_every_byte_in_order(plaintext, sealed):
    packaged = ShortWriter()
    manifest = package.encrypt_stream(io.BytesIO(plaintext), packaged, KEY, "key", "application/octet-stream")
    restored = ShortWriter()
    assert package.decrypt_stream(io.BytesIO(packaged.kept.getvalue()), restored, KEY) == manifest
    assert restored.kept.getvalue() == plaintext
    assert package.decrypt_stream(io.BytesIO(sealed), ShortWriter(), KEY).digest == manifest.digest


FILLS_UP = """
import resource, sys
from shared import package
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[4]), int(sys.argv[4])))  # Python ignores SIGXFSZ
operation, source, destination = sys.argv[1:4]
try:
    if operation == "encrypt":
        package.encrypt_file(source, destination, bytes(range(32)), "key", "application/octet-stream")
    else:
        package.decrypt_file(source, destination, bytes(range(32)))
except OSError as error:
    print(error.errno)
"""


def _fill_up_while_writing(operation: str, source, destination, limit: int) -> str:
    """Runs one file operation in a child process whose files cannot grow past `limit` bytes
    (a destination that fills up part way: nothing is allocated before the writes)."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", FILLS_UP, operation, str(source), str(destination), str(limit)],
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


@pytest.mark.parametrize("operation", ["encrypt", "decrypt"])
def test_a_destination_file_that_fills_up_part_way_leaves_nothing_and_keeps_the_old_file(tmp_path, plaintext,
                                                                                          sealed, operation):
    source = tmp_path / "source"
    source.write_bytes(plaintext if operation == "encrypt" else sealed)
    destination = tmp_path / "destination"
    destination.write_bytes(b"previous content")
    assert _fill_up_while_writing(operation, source, destination, limit=5 * SEGMENT_SIZE) == str(errno.EFBIG)
    assert destination.read_bytes() == b"previous content"
    assert {p.name for p in tmp_path.iterdir()} == {"source", "destination"}  # no partial temporary file
