"""What the `ccr` command groups share: the user-error type, Azure clients from settings,
the release-policy choice, key import, blob transfer with a progress bar, and the local store
where a party keeps the keys it must use again (the TDC's output keys)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from shared import azure_clients, settings
from shared.container_group import trainer_hostdata
from shared.release_policy import ReleasePolicyError, build_release_policy

KEY_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
PROGRESS_CHUNK = 4 << 20


class CliError(Exception):
    """A user error: printed as one line, exit status 1, no traceback."""


def emit(document: dict) -> None:
    """Results go to stdout as one JSON object (easy to read, easy to script)."""
    print(json.dumps(document, indent=2))


# --- arguments shared by several commands ----------------------------------------------

def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    pin = parser.add_mutually_exclusive_group(required=True)
    pin.add_argument("--trainer-image", metavar="REF",
                     help="the contract's trainer image, ccr-trainer@sha256:<hex> (hostdata is derived from it)")
    pin.add_argument("--hostdata", metavar="HEX", help="sha256 hex of the trainer's CCE policy")
    pin.add_argument("--hostdata-file", metavar="FILE", type=Path, help="file holding that hex digest")
    parser.add_argument("--authority", metavar="URL",
                        help="attestation authority trusted by the policy (default: setting CCR_MAA_URL)")


def hostdata(args) -> str:
    if args.trainer_image:
        try:
            return trainer_hostdata(args.trainer_image)
        except ValueError as error:
            raise CliError(f"--trainer-image: {error}") from None
    if args.hostdata_file:
        try:
            return args.hostdata_file.read_text().strip().lower()
        except OSError as error:
            raise CliError(f"--hostdata-file: cannot read {args.hostdata_file} ({error.strerror})") from None
    return args.hostdata.strip().lower()


def release_policy(args) -> dict:
    pinned = hostdata(args)
    authority = args.authority or settings.get("CCR_MAA_URL")
    if not authority:
        raise CliError("no attestation authority: pass --authority or set CCR_MAA_URL")
    try:
        return build_release_policy(authority, pinned)
    except ReleasePolicyError as error:
        raise CliError(f"release policy: {error}") from None


def check_key_name(name: str, option: str) -> str:
    if not KEY_NAME.match(name):
        raise CliError(f"{option}: Key Vault key names use letters, digits and '-' (1-127 characters)")
    return name


def plain_name(value: str, option: str) -> str:
    """Contract ids, dataset and run names become blob path segments: no separators or dots."""
    if not value or len(value) > 100 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise CliError(f"{option}: use letters, digits, '-' and '_' only (at most 100 characters)")
    return value


def default_key_name(*parts: str) -> str:
    return re.sub(r"[^0-9A-Za-z-]+", "-", "-".join(parts)).strip("-")[:127]


# --- Key Vault ---------------------------------------------------------------------------

def import_release_key(name: str, key: bytes, policy: dict) -> str:
    """Imports a 32-byte AES key as an exportable oct-HSM key bound to `policy`; returns its kid."""
    from azure.keyvault.keys import JsonWebKey, KeyReleasePolicy

    from shared.release_policy import policy_to_json
    try:
        client = azure_clients.key_client()
    except RuntimeError as error:
        raise CliError(str(error)) from None
    imported = client.import_key(name, JsonWebKey(kty="oct-HSM", k=key, key_ops=["wrapKey", "unwrapKey", "encrypt", "decrypt"]),
                                 hardware_protected=True, exportable=True,
                                 release_policy=KeyReleasePolicy(policy_to_json(policy)))
    return imported.id


# --- Blob Storage ------------------------------------------------------------------------

def _progress(total: int, label: str):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
                disable=None, leave=False)


def upload(container: str, blob: str, path: Path) -> str:
    """Uploads a file (overwriting); returns the blob URL."""
    from azure.core.exceptions import ResourceExistsError
    service = azure_clients.blob_service()
    try:
        service.create_container(container)
    except ResourceExistsError:
        pass
    client = service.get_blob_client(container, blob)
    size = path.stat().st_size
    with open(path, "rb") as source, _progress(size, f"upload {container}/{blob}") as bar:
        client.upload_blob(source, length=size, overwrite=True, max_concurrency=2,
                           progress_hook=lambda done, _total: bar.update(done - bar.n))
    return client.url


def download(container: str, blob: str, path: Path) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    client = azure_clients.blob_service().get_blob_client(container, blob)
    try:
        size = client.get_blob_properties().size
    except ResourceNotFoundError:
        raise CliError(f"blob {container}/{blob} does not exist") from None
    with open(path, "wb") as out, _progress(size, f"download {container}/{blob}") as bar:
        client.download_blob(max_concurrency=2, progress_hook=lambda done, _t: bar.update(done - bar.n)).readinto(out)


# --- the party's own keys -------------------------------------------------------------

def keys_dir(args) -> Path:
    """Where a party keeps keys it needs again: --keys-dir, CCR_KEYS_DIR, or ~/.ccr/keys."""
    if getattr(args, "keys_dir", None):
        return args.keys_dir
    return Path(os.environ.get("CCR_KEYS_DIR") or Path.home() / ".ccr" / "keys")


def _key_file(directory: Path, kid: str) -> Path:
    parts = kid.rstrip("/").split("/")
    if len(parts) < 3 or parts[-3] != "keys" or not KEY_NAME.match(parts[-2]) or not re.match(r"^[0-9A-Za-z]+$", parts[-1]):
        raise CliError("key id is not a Key Vault key URL (.../keys/<name>/<version>)")
    return directory / f"{parts[-2]}.{parts[-1]}.key.json"


def save_local_key(directory: Path, kid: str, key: bytes) -> Path:
    """Writes the key (hex) with its kid, readable by the owner only (0600, directory 0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _key_file(directory, kid)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"kid": kid, "k": key.hex()}, handle)
    os.replace(temporary, path)
    return path


def load_local_key(directory: Path, kid: str) -> bytes:
    path = _key_file(directory, kid)
    try:
        document = json.loads(path.read_text())
        key = bytes.fromhex(document["k"])
    except FileNotFoundError:
        raise CliError(f"no local copy of key {kid} in {directory} (it is written by `ccr tdc publish-model`)") from None
    except (ValueError, KeyError, TypeError):
        raise CliError(f"local key file {path} is malformed") from None
    if document.get("kid") != kid or len(key) != 32:
        raise CliError(f"local key file {path} does not hold key {kid}")
    return key
