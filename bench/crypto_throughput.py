"""Throughput of the encrypted package format, file to file, for each format version (1: SHA-256
manifest, 2: BLAKE3), beside raw AES-256-GCM, SHA-256 and BLAKE3 alone on the same machine in
the same run, with the peak RSS and CPU time of the process doing each file operation.

Says first whether the CPU has SHA extensions (/proc/cpuinfo flag sha_ni; without them SHA-256
runs at 0.2-0.4 GB/s and caps a version-1 package, issue 15). A random file (--size-mib,
default 1 GiB) in a tmpfs (/dev/shm unless --dir) is encrypted, the plaintext removed, and the
package decrypted (which verifies every segment and the manifest digest) to a file and once
more to /dev/null (the crypto pipeline without the output's page allocation), each in a child
process so its ru_maxrss and CPU time are that operation's; each figure is the best of
--repeat runs, the versions interleaved. Goal (issue 15): encrypt and decrypt >= 1 GB/s on
2 cores without SHA extensions. --mask-sha-extensions measures a CPU that has them as one
without: OpenSSL (hashlib's and cryptography's) is told through OPENSSL_ia32cap to ignore the
SHA extensions (CPUID leaf 7 EBX bit 29), in every process of the run; BLAKE3 never used them.
On a shared machine wall-clock figures drop with the load: the ratios (v2 to v1, each to raw
AES-GCM, measured alike in the same run) are the comparable figures. Last line: one JSON
object. GB/s here are 10^9 bytes per second."""
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
SHA_MASK = ":~0x20000000"  # OPENSSL_ia32cap: clear the SHA extensions bit of CPUID(7).EBX


def sha_extensions() -> bool | None:
    """Whether the CPU advertises the SHA extensions (x86 sha_ni, Arm sha2), None if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"sha_ni", "sha2"})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(operation: str, version: str, source: str, destination: str) -> None:
    """Runs in a child process: one file operation (the throwaway key arrives on stdin, not
    on the command line), then its wall and CPU time (all threads) and peak RSS as JSON."""
    key = bytes.fromhex(sys.stdin.readline().strip())
    start, cpu = time.perf_counter(), time.process_time()
    if operation == "encrypt":
        manifest = package.encrypt_file(source, destination, key, "bench-key", "application/octet-stream",
                                        version=int(version))
    elif operation == "decrypt":
        manifest = package.decrypt_file(source, destination, key)
    else:  # decrypt-null: the same stream, its plaintext thrown away (no output pages to allocate)
        with open(source, "rb", buffering=0) as src, open(os.devnull, "wb", buffering=0) as sink:
            manifest = package.decrypt_stream(src, sink, key)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "pin": manifest.pin(), "size": manifest.size,
                      "peak_rss_mb": _peak_rss_mb()}))


def run_worker(operation: str, version: int, source: Path, destination: Path, key: bytes) -> dict:
    output = subprocess.run([sys.executable, __file__, "--worker", operation, str(version), str(source),
                             str(destination)],
                            input=key.hex() + "\n", check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_primitives(size: int, repeat: int) -> dict:
    """`primitives` in a child process, so OPENSSL_ia32cap applies to it as to the workers."""
    output = subprocess.run([sys.executable, __file__, "--primitives", str(size), str(repeat)], check=True,
                            stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _timed(function, rounds: int) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        function()
    return time.perf_counter() - start, time.process_time() - cpu


def primitives(size: int, repeat: int) -> dict:
    """GB/s (wall) and GB per CPU-second of each primitive alone over `size` bytes, 1 MiB at a
    time, in memory: AES-256-GCM encrypt and decrypt (one thread, as the package runs it),
    SHA-256, BLAKE3 on one thread and BLAKE3 with max_threads (what version 2 uses). Each the
    best of `repeat` rounds, the primitives interleaved."""
    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    aead, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(12)
    plain = memoryview(bytearray(os.urandom(CHUNK)))
    sealed = memoryview(bytearray(CHUNK + 16))
    rounds = max(1, size // CHUNK)
    total = rounds * CHUNK
    sha, b3, b3_threads = hashlib.sha256(), blake3.blake3(), blake3.blake3(max_threads=blake3.blake3.AUTO)
    aead.encrypt_into(nonce, plain, b"header", sealed)
    operations = {
        "aes_gcm_encrypt": lambda: aead.encrypt_into(nonce, plain, b"header", sealed),
        "aes_gcm_decrypt": lambda: aead.decrypt_into(nonce, sealed, b"header", plain),
        "sha256": lambda: sha.update(plain),
        "blake3_1_thread": lambda: b3.update(plain),
        "blake3_max_threads": lambda: b3_threads.update(plain),
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, operation in operations.items():
            wall, cpu = _timed(operation, rounds)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    return {name: {"gb_s": round(total / wall / 1e9, 3), "gb_per_cpu_s": round(total / max(cpu, 1e-9) / 1e9, 3)}
            for name, (wall, cpu) in best.items()}


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(CHUNK * 16, remaining))
            out.write(block)
            remaining -= len(block)


def package_round_trip(scratch: Path, size: int, version: int) -> dict:
    """One encrypt (file -> package) and one decrypt (package -> file) of a fresh random file."""
    plain, sealed, restored = (scratch / f"{n}-v{version}" for n in ("plain.bin", "package.ccr", "restored.bin"))
    write_random(plain, size)
    key = os.urandom(package.KEY_SIZE)
    try:
        encrypted = run_worker("encrypt", version, plain, sealed, key)
        plain.unlink()
        decrypted = run_worker("decrypt", version, sealed, restored, key)
        restored.unlink()
        discarded = run_worker("decrypt-null", version, sealed, restored, key)
    finally:
        for path in (plain, sealed, restored):
            path.unlink(missing_ok=True)
    if not decrypted["pin"] == discarded["pin"] == encrypted["pin"] or decrypted["size"] != size:
        raise SystemExit(f"version {version}: round trip mismatch")
    return {"encrypt": encrypted, "decrypt": decrypted, "decrypt_to_null": discarded,
            "commitment": next(iter(encrypted["pin"]))}


def best_figures(size: int, runs: list[dict]) -> dict:
    figures = {"commitment": runs[0]["commitment"]}
    for operation in ("encrypt", "decrypt", "decrypt_to_null"):
        best = min((run[operation] for run in runs), key=lambda r: r["seconds"])
        figures[operation] = {"gb_s": round(size / best["seconds"] / 1e9, 3),
                              "cpu_s_per_gb": round(best["cpu_seconds"] / (size / 1e9), 3),
                              "peak_rss_mb": round(max(run[operation]["peak_rss_mb"] for run in runs), 1)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="plaintext size (default 1024 MiB = 1 GiB)")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="where the files go (default /dev/shm, a tmpfs: no disk in the figures)")
    parser.add_argument("--versions", default="1,2", help="format versions to measure (default 1,2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each operation; the best counts (default 2)")
    parser.add_argument("--mask-sha-extensions", action="store_true",
                        help="measure as on a CPU without SHA extensions (OPENSSL_ia32cap masks them)")
    args = parser.parse_args()
    if args.mask_sha_extensions and os.environ.get("OPENSSL_ia32cap") != SHA_MASK:
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]],
                  {**os.environ, "OPENSSL_ia32cap": SHA_MASK})  # OpenSSL reads it once, at load
    size = args.size_mib * CHUNK
    sha_ni = sha_extensions()
    masked = os.environ.get("OPENSSL_ia32cap") == SHA_MASK
    print(f"CPU SHA extensions (sha_ni): {'yes' if sha_ni else 'no' if sha_ni is False else 'unknown'}"
          f"{' (masked for this run: OPENSSL_ia32cap=' + SHA_MASK + ')' if masked else ''}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    versions = [int(v) for v in args.versions.split(",")]
    runs: dict[int, list[dict]] = {version: [] for version in versions}
    with tempfile.TemporaryDirectory(prefix="ccr-bench-", dir=args.dir) as scratch:
        for _ in range(args.repeat):
            for version in versions:
                runs[version].append(package_round_trip(Path(scratch), size, version))
    packages = {f"v{version}": best_figures(size, runs[version]) for version in versions}
    raw = run_primitives(min(size, 256 * CHUNK), max(3, args.repeat))
    result = {"size_bytes": size, "sha_extensions": sha_ni, "sha_extensions_masked": masked, "cpus": os.cpu_count(),
              "repeat": args.repeat, "packages": packages, "primitives": raw,
              "load_average_1m": round(os.getloadavg()[0], 2)}
    for name, figures in packages.items():
        for operation in ("encrypt", "decrypt", "decrypt_to_null"):
            figures[operation]["to_raw_aes_gcm"] = round(
                figures[operation]["gb_s"] / raw[f"aes_gcm_{operation.split('_')[0]}"]["gb_s"], 3)
    if "v1" in packages and "v2" in packages:
        result["v2_to_v1"] = {operation: round(packages["v2"][operation]["gb_s"] / packages["v1"][operation]["gb_s"], 2)
                              for operation in ("encrypt", "decrypt", "decrypt_to_null")}
    print(f"plaintext {size / 2**30:.2f} GiB in {args.dir or tempfile.gettempdir()}, best of {args.repeat}")
    for name, figures in packages.items():
        for operation in ("encrypt", "decrypt", "decrypt_to_null"):
            f = figures[operation]
            what = "decrypt file->/dev/null" if operation == "decrypt_to_null" else f"{operation} file->file"
            print(f"{name} ({figures['commitment']}) {what} {f['gb_s']:.3f} GB/s "
                  f"({f['to_raw_aes_gcm']:.2f} of raw AES-GCM), {f['cpu_s_per_gb']:.2f} CPU-s/GB, "
                  f"peak RSS {f['peak_rss_mb']:.0f} MB")
    for name, f in raw.items():
        print(f"{name} alone {f['gb_s']:.3f} GB/s wall, {f['gb_per_cpu_s']:.3f} GB per CPU-second")
    if "v2_to_v1" in result:
        print("v2 / v1: " + ", ".join(f"{k} x{v}" for k, v in result["v2_to_v1"].items()))
    print(f"load average {result['load_average_1m']} on {result['cpus']} CPUs (wall figures drop when the "
          "machine is shared)")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--primitives":
        print(json.dumps(primitives(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
