"""Per-blob SAS URLs: how the control plane lets a trainer touch exactly the blobs of its run.

The trainer gets a read-only SAS for each input blob and a create-only SAS (a new blob, once:
no overwrite, no read, no delete) for its output blob; never the account key, never a
container or account SAS, so it cannot list anything nor reach another contract's blobs.

A client holding the account key (a connection string with AccountKey: Azurite, key-based
accounts) signs with it. An identity-based client (the deployment in infra/, where the storage
account allows no shared key at all) signs the same SAS with a user delegation key
(`BlobServiceClient.get_user_delegation_key`, at most 7 days, which the app's Storage Blob Data
Owner role allows): permissions and the trainer side stay the same. A SAS URL is a secret: keep
it out of logs, records and events.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, UserDelegationKey, generate_blob_sas

READ_ONLY = BlobSasPermissions(read=True)
CREATE_ONLY = BlobSasPermissions(create=True)
MAX_DELEGATION = timedelta(days=7)      # the service's limit on a user delegation key
CLOCK_SKEW = timedelta(minutes=5)       # the key is valid from a little before now


class SasError(RuntimeError):
    """The storage client cannot sign a SAS (no account key and no user delegation key)."""


def user_delegation_key(service: BlobServiceClient, expiry: datetime) -> UserDelegationKey:
    """A user delegation key valid until `expiry`, from the client's Entra ID identity."""
    start = datetime.now(timezone.utc) - CLOCK_SKEW
    if expiry - start > MAX_DELEGATION:
        raise SasError("a user delegation SAS can last at most 7 days")
    try:
        return service.get_user_delegation_key(start, expiry)
    except AzureError as problem:
        status = getattr(problem, "status_code", None)
        raise SasError(f"could not get a user delegation key to sign a SAS ({type(problem).__name__}"
                       f"{f' {status}' if status else ''}): the app's identity needs a role with "
                       "generateUserDelegationKey on the storage account") from None


def blob_sas_url(service: BlobServiceClient, path: str, permission: BlobSasPermissions, expiry: datetime,
                 delegation_key: UserDelegationKey | None = None) -> str:
    """URL of blob `container/name` carrying a SAS for just that blob; HTTPS-only when the
    endpoint is HTTPS. Signed with the account key when the client has one, otherwise with
    `delegation_key` (fetched when not given)."""
    container, _, name = path.partition("/")
    if not container or not name:
        raise ValueError("a blob path is 'container/name'")
    account_key = _account_key(service)
    signing = {"account_key": account_key} if account_key else \
        {"user_delegation_key": delegation_key or user_delegation_key(service, expiry)}
    https = urlsplit(service.url).scheme == "https"
    token = generate_blob_sas(service.account_name, container, name, permission=permission, expiry=expiry,
                              protocol="https" if https else None, **signing)
    return f"{blob_location(service.get_blob_client(container, name).url)}?{token}"


def trainer_blob_urls(service: BlobServiceClient, inputs: list[str], output: str, expiry: datetime,
                      kept: list[str] = ()) -> dict[str, str]:
    """`{blob path: SAS URL}`: read-only for each input, create-only for the output and for each
    blob the clean room keeps for itself (`kept`: a continued-training contract's model state),
    one user delegation key for the whole set when the client has no account key."""
    key = None if _account_key(service) else user_delegation_key(service, expiry)
    urls = {path: blob_sas_url(service, path, READ_ONLY, expiry, key) for path in inputs}
    for path in (output, *kept):
        urls[path] = blob_sas_url(service, path, CREATE_ONLY, expiry, key)
    return urls


def blob_location(url: str) -> str:
    """A blob URL without its query string: where a blob is, never the SAS that reaches it."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


def _account_key(service: BlobServiceClient) -> str | None:
    return getattr(service.credential, "account_key", None)
