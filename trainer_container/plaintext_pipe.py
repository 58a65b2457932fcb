"""A dataset's package decrypted into a pipe, so the join reads its plaintext without it ever
reaching a file: a thread decrypts the package segment by segment (shared/package.py
authenticates each segment, then the plaintext digest against the authenticated manifest)
into an OS pipe, whose read end the reader opens by path (/dev/fd/N). The kernel holds at
most the pipe's buffer (1 MiB) of plaintext at a time.

A reader sees the plaintext before the digest at its end is checked, so its verdict counts
only once the decryption finished: leaving the context joins the thread and raises the
package's own error (tampered, truncated, wrong digest) in preference to whatever the reader
made of a stream cut short, and a reader that stops early (its error, or a stream it did not
read to the end) ends the decryption through a broken pipe."""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from shared import package

PIPE_BYTES = 1 << 20  # Linux's default ceiling for an unprivileged pipe


@contextmanager
def decrypted_pipe(package_path: Path, key: bytes) -> Iterator[Path]:
    """Yields the path of a pipe carrying the plaintext of the package at `package_path`."""
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # a smaller pipe only costs more system calls
        pass
    sink = open(write_end, "wb", buffering=0)
    failure: list[BaseException] = []

    def decrypt() -> None:
        try:
            with sink, open(package_path, "rb", buffering=0) as src:
                package.decrypt_stream(src, sink, key)
        except BaseException as error:  # handed to the reader's thread below
            failure.append(error)

    thread = threading.Thread(target=decrypt, name="ccr-decrypt-pipe", daemon=True)
    thread.start()
    try:
        yield Path(f"/dev/fd/{read_end}")
    except BaseException:
        _close_and_wait(read_end, thread)
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None  # the package is damaged: that is the error to report
        raise
    _close_and_wait(read_end, thread)
    if failure:
        if isinstance(failure[0], BrokenPipeError):
            raise package.PackageError("the reader stopped before the end of the package, "
                                       "so its plaintext digest was never checked") from None
        raise failure[0] from None


def _close_and_wait(read_end: int, thread: threading.Thread) -> None:
    """Closes the pipe's last read end (a writer still blocked on it gets EPIPE) and waits for
    the decryption to finish."""
    os.close(read_end)
    thread.join()
