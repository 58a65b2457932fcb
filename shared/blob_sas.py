"""Per-blob SAS URLs: how the control plane lets a trainer touch exactly the blobs of its run.

The trainer gets a read-only SAS for each input blob and a create-only SAS (a new blob, once:
no overwrite, no read, no delete) for its output blob; never the account key, never a
container or account SAS, so it cannot list anything nor reach another contract's blobs.

They are signed with the account key of the data storage account (Azurite, key-based Azure
accounts). A deployment whose Functions app reaches storage with a managed identity instead
signs the same SAS with a user delegation key (`BlobServiceClient.get_user_delegation_key(start,
expiry)` passed to `generate_blob_sas` as `user_delegation_key=`); permissions and the trainer
side stay the same. A SAS URL is a secret: keep it out of logs, records and events.
"""
from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

READ_ONLY = BlobSasPermissions(read=True)
CREATE_ONLY = BlobSasPermissions(create=True)


class SasError(RuntimeError):
    """The storage client cannot sign a SAS (no account key)."""


def blob_sas_url(service: BlobServiceClient, path: str, permission: BlobSasPermissions, expiry: datetime) -> str:
    """URL of blob `container/name` carrying a SAS for just that blob; HTTPS-only when the
    endpoint is HTTPS."""
    container, _, name = path.partition("/")
    if not container or not name:
        raise ValueError("a blob path is 'container/name'")
    account_key = getattr(service.credential, "account_key", None)
    if not account_key:
        raise SasError("signing a blob SAS needs the storage account key (a connection string with "
                       "AccountKey); a managed-identity deployment signs with a user delegation key")
    https = urlsplit(service.url).scheme == "https"
    token = generate_blob_sas(service.account_name, container, name, account_key=account_key,
                              permission=permission, expiry=expiry, protocol="https" if https else None)
    return f"{blob_location(service.get_blob_client(container, name).url)}?{token}"


def trainer_blob_urls(service: BlobServiceClient, inputs: list[str], output: str, expiry: datetime) -> dict[str, str]:
    """`{blob path: SAS URL}`: read-only for each input, create-only for the output."""
    urls = {path: blob_sas_url(service, path, READ_ONLY, expiry) for path in inputs}
    urls[output] = blob_sas_url(service, output, CREATE_ONLY, expiry)
    return urls


def blob_location(url: str) -> str:
    """A blob URL without its query string: where a blob is, never the SAS that reaches it."""
    return urlsplit(url)._replace(query="", fragment="").geturl()
