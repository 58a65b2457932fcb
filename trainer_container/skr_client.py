"""Client of the SKR sidecar's HTTP API (Microsoft's `skr` container in Azure; the ACI twin's
sidecar locally). The trainer gets data keys this way and no other: the sidecar attests the
container and asks Key Vault to release the key to that attested environment."""
from __future__ import annotations

import base64
from urllib.parse import urlsplit

import requests
from jwcrypto import jwk
from jwcrypto.common import JWException

TIMEOUT_SECONDS = 60


class KeyReleaseError(RuntimeError):
    """The sidecar did not release a usable key (message never carries key material)."""


def endpoint_host(url: str) -> str:
    """An endpoint as Microsoft's sidecar wants it (`akv_endpoint`, `maa_endpoint`): the
    service's host[:port], without a scheme (it builds `https://<host>/...` itself)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.path.strip("/"):
        raise KeyReleaseError("Key Vault and attestation endpoints must be https://<host> URLs")
    return parts.netloc


class SkrClient:
    def __init__(self, skr_url: str, maa_endpoint: str, verify: str | bool = True):
        self.skr_url, self.maa_endpoint, self.verify = skr_url.rstrip("/"), maa_endpoint, verify
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def attest(self, runtime_data: bytes) -> str:
        """An attestation token (MAA) for this group binding `runtime_data` (its x-ms-runtime)."""
        body = {"maa_endpoint": endpoint_host(self.maa_endpoint),
                "runtime_data": base64.b64encode(runtime_data).decode("ascii")}
        try:
            response = self.session.post(f"{self.skr_url}/attest/maa", json=body, verify=self.verify,
                                         timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise KeyReleaseError(f"SKR sidecar unreachable ({type(exc).__name__})") from None
        try:
            token = response.json().get("token") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise KeyReleaseError(f"SKR sidecar gave no attestation token (HTTP {response.status_code})")
        return token

    def release(self, vault_url: str, key_name: str) -> dict:
        """The key `key_name` of that vault, released to this attested group: a private JWK
        dict (an RSA key-encryption key for a grant)."""
        body = {"maa_endpoint": endpoint_host(self.maa_endpoint), "akv_endpoint": endpoint_host(vault_url),
                "kid": key_name}
        try:
            response = self.session.post(f"{self.skr_url}/key/release", json=body, verify=self.verify,
                                         timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise KeyReleaseError(f"SKR sidecar unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise KeyReleaseError(f"SKR sidecar refused to release key {key_name} (HTTP {response.status_code})")
        try:
            released = response.json()["key"]  # a JWK as JSON text (the sidecar's format) or an object
            key = jwk.JWK.from_json(released) if isinstance(released, str) else jwk.JWK(**released)
            if not key.has_private:
                raise ValueError("a public key only")
            return key.export(private_key=True, as_dict=True)
        except (ValueError, KeyError, TypeError, JWException):  # jwcrypto's errors are not ValueErrors
            raise KeyReleaseError(f"SKR sidecar returned no usable key for {key_name}") from None
