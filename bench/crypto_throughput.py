"""Throughput of the encrypted package format, file to file, beside raw AES-256-GCM on the
same machine in the same run, and the peak RSS of the process doing each file operation.

A random 1 GiB file (--size-mib) is encrypted, the plaintext removed, and the package
decrypted (which verifies every segment and the manifest digest), each in a child process
so its ru_maxrss is that operation's peak memory. Everything lives in a temporary directory
that is deleted afterwards. Goals (issue #3): decrypt >= 1 GB/s, encrypt >= 0.7 GB/s (two
passes: digest, then encryption), peak RSS < 200 MB. Last line: one JSON object.
MB/s here are 10^6 bytes per second."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from shared import package  # noqa: E402

CHUNK = 1 << 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(operation: str, source: str, destination: str) -> None:
    """Runs in a child process: one file operation (the throwaway key arrives on stdin, not
    on the command line), then its timing and peak RSS as JSON."""
    key = bytes.fromhex(sys.stdin.readline().strip())
    start = time.perf_counter()
    if operation == "encrypt":
        manifest = package.encrypt_file(source, destination, key, "bench-key", "application/octet-stream")
    else:
        manifest = package.decrypt_file(source, destination, key)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "sha256": manifest.sha256, "size": manifest.size,
                      "peak_rss_mb": _peak_rss_mb()}))


def run_worker(operation: str, source: Path, destination: Path, key: bytes) -> dict:
    output = subprocess.run([sys.executable, __file__, "--worker", operation, str(source), str(destination)],
                            input=key.hex() + "\n", check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def raw_aes_gcm(size: int) -> dict:
    """MB/s of AES-256-GCM alone over the same number of bytes, 1 MiB at a time, in memory,
    and of SHA-256 (the manifest digest; the file operations compute it too)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    aead, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(12)
    plain = memoryview(bytearray(os.urandom(CHUNK)))
    sealed = memoryview(bytearray(CHUNK + 16))
    rounds = max(1, size // CHUNK)
    start = time.perf_counter()
    for _ in range(rounds):
        aead.encrypt_into(nonce, plain, b"header", sealed)
    encrypt = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(rounds):
        aead.decrypt_into(nonce, sealed, b"header", plain)
    decrypt = time.perf_counter() - start
    start = time.perf_counter()
    digest = hashlib.sha256()
    for _ in range(rounds):
        digest.update(plain)
    hashing = time.perf_counter() - start
    total = rounds * CHUNK
    return {"encrypt_mb_s": total / encrypt / 1e6, "decrypt_mb_s": total / decrypt / 1e6,
            "sha256_mb_s": total / hashing / 1e6}


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(CHUNK * 16, remaining))
            out.write(block)
            remaining -= len(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="plaintext size (default 1024 MiB = 1 GiB)")
    args = parser.parse_args()
    size = args.size_mib * CHUNK
    with tempfile.TemporaryDirectory(prefix="ccr-bench-") as scratch:
        plain, sealed, restored = (Path(scratch) / n for n in ("plain.bin", "package.ccr", "restored.bin"))
        write_random(plain, size)
        key = os.urandom(package.KEY_SIZE)
        encrypted = run_worker("encrypt", plain, sealed, key)
        plain.unlink()
        decrypted = run_worker("decrypt", sealed, restored, key)
        package_bytes = sealed.stat().st_size
    if decrypted["sha256"] != encrypted["sha256"] or decrypted["size"] != size:
        raise SystemExit("round trip mismatch")
    raw = raw_aes_gcm(size)
    result = {
        "size_bytes": size,
        "package_bytes": package_bytes,
        "encrypt_file_mb_s": round(size / encrypted["seconds"] / 1e6, 1),
        "decrypt_file_mb_s": round(size / decrypted["seconds"] / 1e6, 1),
        "raw_aes_gcm_encrypt_mb_s": round(raw["encrypt_mb_s"], 1),
        "raw_aes_gcm_decrypt_mb_s": round(raw["decrypt_mb_s"], 1),
        "sha256_mb_s": round(raw["sha256_mb_s"], 1),
        "encrypt_to_raw_ratio": round(size / encrypted["seconds"] / raw["encrypt_mb_s"] / 1e6, 3),
        "decrypt_to_raw_ratio": round(size / decrypted["seconds"] / raw["decrypt_mb_s"] / 1e6, 3),
        "encrypt_peak_rss_mb": round(encrypted["peak_rss_mb"], 1),
        "decrypt_peak_rss_mb": round(decrypted["peak_rss_mb"], 1),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(f"plaintext {size / 2**30:.2f} GiB, package {package_bytes:,} bytes")
    print(f"encrypt file->file {result['encrypt_file_mb_s']:,.0f} MB/s (raw AES-256-GCM "
          f"{result['raw_aes_gcm_encrypt_mb_s']:,.0f} MB/s), peak RSS {result['encrypt_peak_rss_mb']:.0f} MB")
    print(f"decrypt file->file {result['decrypt_file_mb_s']:,.0f} MB/s (raw AES-256-GCM "
          f"{result['raw_aes_gcm_decrypt_mb_s']:,.0f} MB/s), peak RSS {result['decrypt_peak_rss_mb']:.0f} MB")
    print(f"sha256 alone {result['sha256_mb_s']:,.0f} MB/s; load average {result['load_average_1m']} "
          f"on {result['cpus']} CPUs (figures drop when the machine is shared)")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        main()
