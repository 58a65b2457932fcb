"""Client of the SKR sidecar's HTTP API (Microsoft's `skr` container in Azure; the ACI twin's
sidecar locally). The trainer gets data keys this way and no other: the sidecar attests the
container and asks Key Vault to release the key to that attested environment."""
from __future__ import annotations

import base64
from urllib.parse import urlsplit

import requests
from jwcrypto import jwk
from jwcrypto.common import JWException

KEY_BYTES = 32
TIMEOUT_SECONDS = 60


class KeyReleaseError(RuntimeError):
    """The sidecar did not release a usable key (message never carries key material)."""


def vault_endpoint(kid: str) -> str:
    """The Key Vault a key id lives in (each party may use its own vault)."""
    parts = urlsplit(kid)
    if parts.scheme != "https" or not parts.netloc or not parts.path.startswith("/keys/"):
        raise KeyReleaseError("key id is not a Key Vault key URL")
    return f"{parts.scheme}://{parts.netloc}"


class SkrClient:
    def __init__(self, skr_url: str, maa_endpoint: str, verify: str | bool = True):
        self.skr_url, self.maa_endpoint, self.verify = skr_url.rstrip("/"), maa_endpoint, verify
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def release_key(self, kid: str) -> bytes:
        """The 32-byte data key behind `kid` (an `oct` JWK's "k")."""
        body = {"maa_endpoint": self.maa_endpoint, "akv_endpoint": vault_endpoint(kid), "kid": kid}
        try:
            response = self.session.post(f"{self.skr_url}/key/release", json=body, verify=self.verify,
                                         timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise KeyReleaseError(f"SKR sidecar unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise KeyReleaseError(f"SKR sidecar refused to release key {kid} (HTTP {response.status_code})")
        try:
            released = response.json()["key"]  # a JWK as JSON text (the sidecar's format) or an object
            key = jwk.JWK.from_json(released) if isinstance(released, str) else jwk.JWK(**released)
            material = base64.urlsafe_b64decode(key.export(private_key=True, as_dict=True)["k"] + "==")
        except (ValueError, KeyError, TypeError, JWException):  # jwcrypto's errors are not ValueErrors
            raise KeyReleaseError(f"SKR sidecar returned no usable key for {kid}") from None
        if len(material) != KEY_BYTES:
            raise KeyReleaseError(f"key {kid} is not a {KEY_BYTES}-byte data key")
        return material
