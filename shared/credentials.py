"""The credential every Azure SDK client in the app uses: a static bearer token when the
`CCR_ACCESS_TOKEN` setting holds one (the local twins require exactly that token), otherwise
`DefaultAzureCredential` (in Azure: the app's managed identity, the user-assigned one named by
`AZURE_CLIENT_ID`). Identity-based storage settings may ask for a managed identity outright
(`X__credential=managedidentity`, `X__clientId`), as the Functions host reads them.
azure-identity is imported only when a token has to come from Entra ID."""
from __future__ import annotations

import threading
import time

from azure.core.credentials import AccessToken, TokenCredential

from shared import settings

STATIC_TOKEN_LIFETIME_SECONDS = 3600

_lock = threading.Lock()
_identity_credentials: dict[tuple, TokenCredential] = {}


class StaticTokenCredential:
    """A TokenCredential that always returns one fixed token (never logged or repr'd)."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("a static token credential needs a non-empty token")
        self._token = token

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + STATIC_TOKEN_LIFETIME_SECONDS)

    def __repr__(self) -> str:
        return "StaticTokenCredential(<redacted>)"


def _identity(kind: str, client_id: str | None = None) -> TokenCredential:
    """One credential per kind and identity for the process, so its token cache is shared by
    every client instead of fetching a token per client."""
    with _lock:
        key = (kind, client_id)
        if key not in _identity_credentials:
            try:
                from azure import identity
            except ImportError:
                raise RuntimeError("no CCR_ACCESS_TOKEN is set and azure-identity is not installed") from None
            if kind == "managedidentity":
                _identity_credentials[key] = identity.ManagedIdentityCredential(client_id=client_id)
            else:
                _identity_credentials[key] = identity.DefaultAzureCredential()
        return _identity_credentials[key]


def get_credential() -> TokenCredential:
    token = settings.get("CCR_ACCESS_TOKEN")
    if token:
        return StaticTokenCredential(token)
    return _identity("default")


def storage_credential(account: settings.StorageAccount) -> TokenCredential:
    """The credential of an identity-based storage connection."""
    if (account.credential or "").lower() == "managedidentity" and not settings.get("CCR_ACCESS_TOKEN"):
        return _identity("managedidentity", account.client_id)
    return get_credential()
