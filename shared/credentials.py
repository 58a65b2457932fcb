"""The credential every Azure SDK client in the app uses: a static bearer token from the
`CCR_ACCESS_TOKEN` setting locally (the twins require exactly that token), otherwise
`DefaultAzureCredential` (managed identity in Azure). azure-identity is imported only then."""
from __future__ import annotations

import time

from azure.core.credentials import AccessToken, TokenCredential

from shared import settings

STATIC_TOKEN_LIFETIME_SECONDS = 3600


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


def get_credential() -> TokenCredential:
    token = settings.get("CCR_ACCESS_TOKEN")
    if token:
        return StaticTokenCredential(token)
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise RuntimeError("CCR_ACCESS_TOKEN is not set and azure-identity is not installed") from None
    return DefaultAzureCredential()
