"""What the `ccr` command groups share: the user-error type, results and progress lines, the
release policy of a contract's key-encryption keys and their creation in Key Vault, blob
transfer with a progress bar (a line per step when stderr is not a terminal), and the local
store where a party keeps its data keys (datasets, model, output), which never leave it
unwrapped. Heavy libraries are imported inside the functions that use them (fast `--help`)."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

KEY_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
PROGRESS_CHUNK = 4 << 20


class CliError(Exception):
    """A user error: printed as one line, exit status 1, no traceback."""


def emit(document: dict) -> None:
    """Results go to stdout as one JSON object (easy to read, easy to script), or as the
    command line's --output / --query ask (ccr/output.py)."""
    from ccr.output import write
    write(document)


def step(message: str) -> None:
    """One progress line on stderr (`ccr: <message>`): what a command is doing now."""
    print(f"ccr: {message}", file=sys.stderr, flush=True)


# --- contracts and their grants --------------------------------------------------------

def authority(args) -> str:
    """The attestation authority KEK release policies trust: --authority or CCR_MAA_URL."""
    from shared import settings
    value = getattr(args, "authority", None) or settings.get("CCR_MAA_URL")
    if not value:
        raise CliError("no attestation authority: pass --authority or set CCR_MAA_URL")
    return value


def contract_policy(authority_url: str, payload: dict, digest: str) -> dict:
    """The release policy of this contract's KEKs (pins the host data of its trainer group)."""
    from shared.key_grants import kek_release_policy
    from shared.release_policy import ReleasePolicyError
    try:
        return kek_release_policy(authority_url, payload, digest)
    except (ValueError, ReleasePolicyError) as error:
        raise CliError(f"release policy: {error}") from None


def plain_name(value: str, option: str) -> str:
    """Contract ids, dataset and run names become blob path segments: no separators or dots."""
    if not value or len(value) > 100 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise CliError(f"{option}: use letters, digits, '-' and '_' only (at most 100 characters)")
    return value


# --- Key Vault ---------------------------------------------------------------------------

def create_kek(vault_url: str, name: str, policy: dict):
    """The public half of the exportable RSA-HSM key-encryption key `name`, released only under
    `policy`: created unless it exists (a retried grant reuses it, so an earlier grant still
    matches its latest version); an existing one must carry exactly that policy."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.keyvault.keys import KeyReleasePolicy
    from cryptography.hazmat.primitives.asymmetric import rsa

    from shared import azure_clients
    from shared.key_grants import KEK_BITS
    from shared.release_policy import policy_from_json, policy_to_json
    client = azure_clients.key_client(vault_url)
    try:
        try:
            key = client.get_key(name)
            existing = key.properties.release_policy
            if existing is None or policy_from_json(existing.encoded_policy) != policy:
                raise CliError(f"Key Vault {vault_url} already holds key {name} with another release policy")
        except ResourceNotFoundError:
            key = client.create_rsa_key(name, size=KEK_BITS, hardware_protected=True, exportable=True,
                                        key_operations=["wrapKey", "unwrapKey", "encrypt", "decrypt"],
                                        release_policy=KeyReleasePolicy(policy_to_json(policy), immutable=True))
    except HttpResponseError as error:
        raise CliError(f"Key Vault {vault_url} refused key {name} (HTTP {error.status_code})") from None
    finally:
        client.close()
    return rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()


# --- Blob Storage ------------------------------------------------------------------------

class _Lines:
    """Progress when stderr is not a terminal (a log, CI, a pipe): a line as a transfer starts
    and one when it ends, where a terminal gets a bar."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.n, self._started = total, label, 0, time.monotonic()

    def __enter__(self):
        step(f"{self.label}: {_size(self.total)} ...")
        return self

    def update(self, count: int) -> None:
        self.n += count

    def __exit__(self, kind, *_):
        if kind is None:
            step(f"{self.label}: done ({_size(self.total)} in {time.monotonic() - self._started:.1f} s)")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def _progress(total: int, label: str):
    if not sys.stderr.isatty():
        return _Lines(total, label)
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr, leave=False)


# A party reaches storage only through SAS URLs for its own blobs (`party`: a ccr.party.PartySession,
# POST /api/sas); without one, the storage account connection is used (an operator's setup).
# A create-only SAS allows one Put Blob of a new blob (no Put Block: Azurite asks write permission
# for it), so such uploads stream the file in one request, at most MAX_SINGLE_PUT bytes.
MAX_SINGLE_PUT = 5000 << 20
_BLOB_API_VERSION = "2021-08-06"


class BlobExists(CliError):
    """A create-only upload found the blob there already."""


class _Reading:
    """A file streamed as a request body (Content-Length from its size), reporting progress."""

    def __init__(self, source, size: int, advance):
        self._source, self._size, self._advance = source, size, advance

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self._advance(len(chunk))
        return chunk


def _put_new_blob(url: str, path: Path, label: str) -> None:
    """One streamed Put Blob through a create-only SAS (If-None-Match: *: never an overwrite)."""
    import requests
    size = path.stat().st_size
    if size > MAX_SINGLE_PUT:
        raise CliError(f"{path} is larger than {MAX_SINGLE_PUT >> 20} MiB, the most one upload through a SAS takes")
    with open(path, "rb") as source, _progress(size, label) as bar:
        try:
            response = requests.put(url, data=_Reading(source, size, bar.update), timeout=600, headers={
                "x-ms-blob-type": "BlockBlob", "x-ms-version": _BLOB_API_VERSION, "If-None-Match": "*",
                "Content-Type": "application/octet-stream"})
        except requests.RequestException as error:
            raise CliError(f"cannot reach storage for {label} ({type(error).__name__})") from None
    if response.status_code in (409, 412) or response.headers.get("x-ms-error-code") == "BlobAlreadyExists":
        raise BlobExists(f"{label}: the blob exists already (a SAS creates a blob once)")
    if response.status_code != 201:
        raise CliError(f"storage refused {label} (HTTP {response.status_code} "
                       f"{response.headers.get('x-ms-error-code', '')})".rstrip() + ")")


def upload(container: str, blob: str, path: Path, party=None) -> str:
    """Uploads a file; returns the blob URL (never a SAS). Through `party`, a new blob only;
    with the account connection, overwriting."""
    from shared.blob_sas import blob_location
    if party is not None:
        url = party.sas(f"{container}/{blob}", "create")
        _put_new_blob(url, path, f"upload {container}/{blob}")
        return blob_location(url)
    client = _account_blob(container, blob)
    size = path.stat().st_size
    with open(path, "rb") as source, _progress(size, f"upload {container}/{blob}") as bar:
        client.upload_blob(source, length=size, overwrite=True, max_concurrency=2,
                           progress_hook=lambda done, _total: bar.update(done - bar.n))
    return client.url


def upload_text(container: str, blob: str, text: str, party=None, contract: dict | None = None) -> None:
    """A small blob (a grant): through `party` created once (BlobExists if there: read it back
    with `download_text`), with the account connection overwritten if present."""
    if party is not None:
        import requests
        url = party.sas(f"{container}/{blob}", "create", contract)
        try:
            response = requests.put(url, data=text.encode(), timeout=60, headers={
                "x-ms-blob-type": "BlockBlob", "x-ms-version": _BLOB_API_VERSION, "If-None-Match": "*"})
        except requests.RequestException as error:
            raise CliError(f"cannot reach storage for {container}/{blob} ({type(error).__name__})") from None
        if response.status_code == 201:
            return
        if response.status_code in (403, 409, 412):   # a create-only SAS cannot touch an existing blob
            raise BlobExists(f"{container}/{blob} exists already")
        raise CliError(f"storage refused {container}/{blob} (HTTP {response.status_code})")
    _account_blob(container, blob).upload_blob(text.encode(), overwrite=True)


def _account_blob(container: str, blob: str):
    """A blob client through the account connection (local tools and tests), its container made."""
    from azure.core.exceptions import ResourceExistsError
    service = operator_storage()
    try:
        service.create_container(container)
    except ResourceExistsError:
        pass
    return service.get_blob_client(container, blob)


def _reader(container: str, blob: str, party=None, contract: dict | None = None):
    from azure.storage.blob import BlobClient
    if party is not None:
        return BlobClient.from_blob_url(party.sas(f"{container}/{blob}", "read", contract))
    return operator_storage().get_blob_client(container, blob)


def operator_storage():
    """The storage account through its connection: an operator's setup (and the CLI tests), for
    a command run without a party identity and CCR_FUNCTIONS_URL. Only a connection that is
    configured: never the local profile's implicit Azurite default (a party that forgot its
    settings must not retry against 127.0.0.1)."""
    from shared import azure_clients, settings
    try:
        account = settings.storage_account()
    except settings.MissingSettings:
        account = None
    if account is None or account.setting == "Azurite (local profile)":
        raise CliError("no clean room configured: set CCR_FUNCTIONS_URL and your identity (CCR_PARTY_DID and "
                       "CCR_PARTY_KEY, or --did/--key); for the local stack run `python -m local_emulator up` "
                       "and set CCR_LOCAL_PROFILE=1 (`ccr profile` shows what is used)")
    return azure_clients.blob_service()


def download_text(container: str, blob: str, party=None, contract: dict | None = None) -> str | None:
    """A small blob's text, or None if it does not exist."""
    from azure.core.exceptions import ResourceNotFoundError
    try:
        return _reader(container, blob, party, contract).download_blob().readall().decode()
    except ResourceNotFoundError:
        return None


def download(container: str, blob: str, path: Path, party=None) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    client = _reader(container, blob, party)
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


def _key_file(directory: Path, key_id: str) -> Path:
    if not KEY_ID.match(key_id or ""):
        raise CliError(f"{key_id!r} is not a key id (letters, digits, '_', '.', '-')")
    return directory / f"{key_id}.key.json"


def new_key_id(prefix: str) -> str:
    """A fresh data key id: `<prefix>-<16 random hex>` (names the key, never reveals it)."""
    return f"{re.sub(r'[^0-9A-Za-z_-]+', '-', prefix).strip('-')[:60] or 'key'}-{os.urandom(8).hex()}"


def save_local_key(directory: Path, key_id: str, key: bytes) -> Path:
    """Writes the key (hex) with its id, readable by the owner only (0600, directory 0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _key_file(directory, key_id)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"key_id": key_id, "k": key.hex()}, handle)
    os.replace(temporary, path)
    return path


def load_local_key(directory: Path, key_id: str) -> bytes:
    path = _key_file(directory, key_id)
    try:
        document = json.loads(path.read_text())
        key = bytes.fromhex(document["k"])
    except FileNotFoundError:
        raise CliError(f"no local copy of key {key_id} in {directory} (`ccr tdp publish` and `ccr tdc publish-model` "
                       "write it there; pass --keys-dir or set CCR_KEYS_DIR)") from None
    except (ValueError, KeyError, TypeError):
        raise CliError(f"local key file {path} is malformed") from None
    if document.get("key_id") != key_id or len(key) != 32:
        raise CliError(f"local key file {path} does not hold key {key_id}")
    return key
