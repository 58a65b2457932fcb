"""The secure-key-release result format, both sides of it.

Key Vault answers a granted release with `{"value": <JWS>}`; the JWS payload's
`response.key.key.key_hsm` is base64url of `{"schema_version", "header": {"kid", "alg": "dir",
"enc"}, "ciphertext"}`, and the ciphertext is PKCS#11 CKM_RSA_AES_KEY_WRAP: an ephemeral AES-256
key encrypted with RSA-OAEP to the attested environment's public key, followed by the target key
wrapped with that AES key (AES key wrap with padding, RFC 5649). The OAEP hash follows `enc`:
SHA-1 for CKM_RSA_AES_KEY_WRAP (as in PKCS#11 and Microsoft's SKR sidecar), SHA-256 for
RSA_AES_KEY_WRAP_256, SHA-384 for RSA_AES_KEY_WRAP_384.

`wrap_for_release` is the vault's half (used by the Key Vault twin); `unwrap_release_result` /
`released_jwk` are the attested side's half (the SKR sidecar; Microsoft's sidecar in Azure).
Errors never carry key material."""
from __future__ import annotations

import base64
import json
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding, aes_key_wrap_with_padding
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

OAEP_HASHES = {"CKM_RSA_AES_KEY_WRAP": hashes.SHA1, "RSA_AES_KEY_WRAP_256": hashes.SHA256,
               "RSA_AES_KEY_WRAP_384": hashes.SHA384}
EPHEMERAL_AES_BYTES = 32
SCHEMA_VERSION = "1.0"


class KeyReleaseFormatError(ValueError):
    """A release result that cannot be verified or unwrapped with the given key."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _oaep(enc: str) -> padding.OAEP:
    if enc not in OAEP_HASHES:
        raise ValueError(f"unsupported key release encryption {enc!r}; use one of {', '.join(OAEP_HASHES)}")
    algorithm = OAEP_HASHES[enc]()
    return padding.OAEP(mgf=padding.MGF1(algorithm=algorithm), algorithm=algorithm, label=None)


def _rsa_public(key) -> rsa.RSAPublicKey:
    if isinstance(key, jwk.JWK):
        key = serialization.load_pem_public_key(key.export_to_pem())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the wrapping key must be an RSA public key")
    return key


def _rsa_private(key) -> rsa.RSAPrivateKey:
    if isinstance(key, jwk.JWK):
        if not key.has_private:
            raise KeyReleaseFormatError("unwrapping needs the RSA private key")
        key = serialization.load_pem_private_key(key.export_to_pem(private_key=True, password=None), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyReleaseFormatError("unwrapping needs an RSA private key")
    return key


def wrap_for_release(target: bytes, wrapping_key, enc: str = "CKM_RSA_AES_KEY_WRAP") -> str:
    """`key_hsm` (base64url JSON) carrying `target` wrapped to `wrapping_key` (RSA public key
    or its JWK)."""
    oaep = _oaep(enc)
    public = _rsa_public(wrapping_key)
    ephemeral = os.urandom(EPHEMERAL_AES_BYTES)
    ciphertext = public.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, target)
    kid = wrapping_key.get("kid") if isinstance(wrapping_key, jwk.JWK) else None
    blob = {"schema_version": SCHEMA_VERSION, "header": {"kid": kid, "alg": "dir", "enc": enc},
            "ciphertext": _b64url(ciphertext)}
    return _b64url(json.dumps(blob).encode())


def release_payload(value: str, trusted_ca_pem: bytes | None = None) -> dict:
    """The verified payload of a release result: the JWS signature is checked against its
    `x5c` leaf certificate, and, given `trusted_ca_pem`, that leaf must be issued by that CA."""
    try:
        token = jws.JWS()
        token.deserialize(value)
        header = token.jose_header
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]]
        if header.get("alg") != "RS256":
            raise KeyReleaseFormatError("release result must be signed with RS256")
        token.verify(jwk.JWK.from_pem(chain[0].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)), alg="RS256")
        if trusted_ca_pem is not None:
            _check_issued_by(chain, x509.load_pem_x509_certificate(trusted_ca_pem))
        return json.loads(token.payload)
    except KeyReleaseFormatError:
        raise
    except (JWException, KeyError, TypeError, ValueError, IndexError):
        raise KeyReleaseFormatError("release result is not a JWS signed by its x5c certificate") from None


def _check_issued_by(chain: list[x509.Certificate], ca: x509.Certificate) -> None:
    for child, parent in zip(chain, chain[1:] + [ca]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise KeyReleaseFormatError("release result is not signed by a trusted vault certificate") from None
        if parent.fingerprint(hashes.SHA256()) == ca.fingerprint(hashes.SHA256()):
            return
    raise KeyReleaseFormatError("release result is not signed by a trusted vault certificate")


def released_jwk(value: str, private_key, trusted_ca_pem: bytes | None = None) -> dict:
    """The released key as a private JWK dict (`oct` with `k`, or RSA with its private
    parameters), with the vault's `kid`."""
    payload = release_payload(value, trusted_ca_pem)
    try:
        released = payload["response"]["key"]["key"]
        enc = payload["request"]["enc"]
        blob = json.loads(_unb64url(released["key_hsm"]))
        ciphertext = _unb64url(blob["ciphertext"])
    except (KeyError, TypeError, ValueError):
        raise KeyReleaseFormatError("release result has no key_hsm ciphertext") from None
    private = _rsa_private(private_key)
    split = private.key_size // 8
    try:
        ephemeral = private.decrypt(ciphertext[:split], _oaep(enc))
        material = aes_key_unwrap_with_padding(ephemeral, ciphertext[split:])
    except (ValueError, InvalidUnwrap):
        raise KeyReleaseFormatError("released key does not unwrap with this private key") from None
    kty = str(released.get("kty", ""))
    about = {name: released[name] for name in ("kid", "key_ops") if released.get(name) is not None}
    if kty.startswith("oct"):
        return {"kty": "oct", "k": _b64url(material), **about}
    if kty.startswith("RSA"):
        key = jwk.JWK.from_pem(serialization.load_der_private_key(material, password=None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return {**key.export_private(as_dict=True), **about}
    raise KeyReleaseFormatError("released key has an unsupported key type")


def unwrap_release_result(value: str, private_key, trusted_ca_pem: bytes | None = None) -> bytes | jwk.JWK:
    """The released key: raw bytes for an `oct` key, a private `jwk.JWK` for an RSA key."""
    released = released_jwk(value, private_key, trusted_ca_pem)
    if released["kty"] == "oct":
        return _unb64url(released["k"])
    return jwk.JWK(**{k: v for k, v in released.items() if k not in ("key_ops", "kid")})
