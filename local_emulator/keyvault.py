"""Twin of Azure Key Vault (Premium / Managed HSM keys) with secure key release.

Serves over HTTPS on loopback the REST subset azure-keyvault-keys 4.11.3 calls, so the
official `KeyClient` works unchanged: create and import keys (RSA/RSA-HSM, oct/oct-HSM) with
`exportable` and a release policy, get a key (latest or a version), list keys and versions
(paged with nextLink), delete / get deleted / purge, and release a key
(`POST /keys/{name}/{version}/release`, also the versionless `/keys/{name}//release` the SDK
sends and `/keys/{name}/release` Microsoft's SKR sidecar sends).
Authentication is Key Vault's challenge: a request without a known principal's Bearer token
gets 401 + `WWW-Authenticate`. Authorization is Azure RBAC (local_emulator/vault_rbac.py): each
operation needs its data action from a role assigned at the vault's or the key's scope, else
403 `Forbidden` / innererror `ForbiddenByRbac`; release needs `keys/release/action`.

Release verifies the attestation token (RS256, against the issuing authority's JWKS at
`{iss}/certs`, over HTTPS with the loopback CA), checks exp/nbf, evaluates the key's release
policy (shared.release_policy) and returns the key wrapped to the RSA key in the token's
`x-ms-runtime.keys`, as a JWS signed with the vault's TLS certificate (format: shared.key_release).

Keys persist as JSON files (0600) under `<data_dir>/keys/`; key material and tokens are never
logged or put into error messages."""
from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk, jws, jwt
from jwcrypto.common import JWException

from local_emulator import vault_rbac as rbac
from local_emulator.tls import LoopbackServer, LoopbackTls, write_private
from shared import release_policy as policies
from shared.key_release import wrap_for_release

API_VERSION = "7.6"
KEY_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
VERSION = re.compile(r"^[0-9a-f]{32}$")
CHALLENGE = ('Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
             'resource="https://vault.azure.net"')
DEFAULT_OPS = {"RSA": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
               "oct": ["encrypt", "decrypt", "wrapKey", "unwrapKey"]}
RSA_SIZES = (2048, 3072, 4096)
OCT_SIZES = (128, 192, 256)
PAGE_SIZE = 25
TOKEN_LEEWAY_SECONDS = 60
JWKS_TIMEOUT_SECONDS = 10


class VaultError(Exception):
    """An error answered in Key Vault's shape: {"error": {"code", "message"[, "innererror"]}}."""

    def __init__(self, status: int, code: str, message: str, inner_code: str | None = None):
        super().__init__(message)
        self.status, self.code, self.inner_code = status, code, inner_code

    def body(self) -> dict:
        error = {"code": self.code, "message": str(self)}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise VaultError(400, "BadParameter", f"{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise VaultError(400, "BadParameter", f"{what} is not valid base64url") from None


class KeyStore:
    """Keys and their versions as JSON files (0600), one per key name; newest version last."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.folder / f"{name.lower()}.json"     # Key Vault names are case-insensitive

    def versions(self, name: str) -> list[dict]:
        try:
            return json.loads(self._path(name).read_text())["versions"]
        except FileNotFoundError:
            return []

    def add(self, name: str, record: dict) -> None:
        with self.lock:
            if self._deleted_path(name).exists():
                raise VaultError(409, "Conflict", f"Key {name} is currently in a deleted but recoverable state; purge it first.")
            versions = self.versions(name) + [record]
            write_private(self._path(name), json.dumps({"name": name, "versions": versions}).encode())

    def get(self, name: str, version: str | None) -> dict:
        versions = self.versions(name)
        if version:
            versions = [v for v in versions if v["version"] == version]
        if not versions:
            raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name}{'/' + version if version else ''} was not found in this key vault.")
        return versions[-1]

    def names(self) -> list[str]:
        return sorted(json.loads(p.read_text())["name"] for p in self.folder.glob("*.json"))

    def _deleted_path(self, name: str) -> Path:
        return self.folder / "deleted" / f"{name.lower()}.json"

    def delete(self, name: str) -> dict:
        """Move every version of `name` to the deleted collection; the newest version."""
        with self.lock:
            latest = self.get(name, None)
            self._deleted_path(name).parent.mkdir(exist_ok=True)
            os.replace(self._path(name), self._deleted_path(name))
            return latest

    def deleted(self, name: str) -> dict:
        try:
            return json.loads(self._deleted_path(name).read_text())["versions"][-1]
        except FileNotFoundError:
            raise VaultError(404, "KeyNotFound", f"Deleted Key not found: {name}") from None

    def purge(self, name: str) -> None:
        with self.lock:
            self.deleted(name)
            self._deleted_path(name).unlink()


class KeyVaultTwin:
    """`start()`, `stop()`, `url`; the official KeyClient talks to `url`."""

    def __init__(self, data_dir: str | Path, tls: LoopbackTls, access: rbac.VaultAccess, host: str = "127.0.0.1",
                 port: int = 0):
        """`access`: the vault's principals and role assignments (who may do what)."""
        if not isinstance(access, rbac.VaultAccess):
            raise TypeError("the Key Vault twin needs its principals and role assignments (vault_rbac.VaultAccess)")
        self.store = KeyStore(Path(data_dir) / "keys")
        self._tls = tls
        self.access = access
        self._signing_key = jwk.JWK.from_pem(tls.server_private_key_pem())
        self._x5c = [base64.b64encode(_pem_to_der(pem)).decode() for pem in tls.server_certificate_chain_pem()]
        self._server = LoopbackServer(self._route, tls.server_context(), port=port, host=host, name="keyvault-twin")
        # The audit trail of release operations (what Key Vault's AuditEvent logs record):
        # (key name, "granted" | "refused"), never key material or tokens.
        self.releases: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> "KeyVaultTwin":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    # --- routing ------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict, headers, body: bytes):
        try:
            caller = self.access.principal(headers.get("Authorization"))
        except rbac.NotAuthenticated:
            return 401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}, \
                {"WWW-Authenticate": CHALLENGE}
        try:
            result = self._handle(method, path, query, body, functools.partial(self._allow, caller))
            return (204, None, {}) if result is None else (200, result, {})
        except VaultError as error:
            return error.status, error.body(), {}

    def _allow(self, caller: str, data_action: str, key_name: str | None = None) -> None:
        try:
            self.access.require(caller, data_action, key_name)
        except rbac.ForbiddenByRbac as denied:
            raise VaultError(403, "Forbidden", str(denied), "ForbiddenByRbac") from None

    def _handle(self, method: str, path: str, query: dict, body: bytes, allow) -> dict | None:
        """The operation at `path`, once `allow(data action, key name)` lets the caller do it."""
        if not query.get("api-version"):
            raise VaultError(400, "BadParameter", "The api-version query parameter is required.")
        parts = path.split("/")[1:]           # "/keys/a//release" -> ["keys", "a", "", "release"]
        if len(parts) == 2 and parts[0] == "deletedkeys" and KEY_NAME.match(parts[1]):
            if method == "GET":
                allow(rbac.READ, parts[1])
                return self._deleted_bundle(parts[1], self.store.deleted(parts[1]))
            if method == "DELETE":
                allow(rbac.PURGE, parts[1])
                self.store.purge(parts[1])
                return None
        if not parts or parts[0] != "keys":
            raise VaultError(404, "NotFound", "no such resource")
        if len(parts) == 1 or (len(parts) == 2 and parts[1] == ""):
            if method == "GET":
                allow(rbac.READ)
                return self._list(None, query)
        else:
            name = parts[1]
            if not KEY_NAME.match(name):
                raise VaultError(400, "BadParameter", "Key name must match ^[0-9a-zA-Z-]{1,127}$.")
            rest = parts[2:]
            if method == "PUT" and rest in ([], [""]):
                allow(rbac.IMPORT, name)
                return self._import(name, self._json(body))
            if method == "GET" and rest in ([], [""]):
                allow(rbac.READ, name)
                return self._bundle(name, self.store.get(name, None))
            if method == "DELETE" and rest in ([], [""]):
                allow(rbac.DELETE, name)
                return self._deleted_bundle(name, self.store.delete(name))
            if method == "POST" and rest == ["create"]:
                allow(rbac.CREATE, name)
                return self._create(name, self._json(body))
            if method == "GET" and rest == ["versions"]:
                allow(rbac.READ, name)
                return self._list(name, query)
            if method == "GET" and len(rest) == 1:
                allow(rbac.READ, name)
                return self._bundle(name, self.store.get(name, self._version(rest[0])))
            if method == "POST" and (rest == ["release"] or (len(rest) == 2 and rest[1] == "release")):
                # versionless `/keys/{name}/release` is how Microsoft's SKR sidecar posts it
                return self._release(name, rest[0] if len(rest) == 2 else "", self._json(body), query, allow)
        raise VaultError(404, "NotFound", "no such operation")

    @staticmethod
    def _version(text: str) -> str:
        if not VERSION.match(text):
            raise VaultError(404, "KeyNotFound", "A key with this version was not found in this key vault.")
        return text

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            raise VaultError(400, "BadParameter", "The request body is not valid JSON.") from None
        if not isinstance(value, dict):
            raise VaultError(400, "BadParameter", "The request body must be a JSON object.")
        return value

    # --- create / import / read -------------------------------------------------------

    def _import(self, name: str, body: dict) -> dict:
        key = body.get("key")
        if not isinstance(key, dict):
            raise VaultError(400, "BadParameter", "Property key is required.")
        family, hsm = _family(key.get("kty"))
        if family == "oct":
            material = _unb64url(key.get("k"), "key.k")
            if len(material) * 8 not in OCT_SIZES:
                raise VaultError(400, "BadParameter", "oct keys must be 128, 192 or 256 bits.")
            stored = {"k": _b64url(material)}
        else:
            stored = {"pem": _rsa_private_pem(key)}
        return self._add(name, family, hsm or bool(body.get("Hsm")), key.get("key_ops"), stored, body)

    def _create(self, name: str, body: dict) -> dict:
        family, hsm = _family(body.get("kty"))
        size = body.get("key_size")
        if family == "oct":
            size = size or 256
            if size not in OCT_SIZES:
                raise VaultError(400, "BadParameter", "oct key_size must be 128, 192 or 256.")
            stored = {"k": _b64url(os.urandom(size // 8))}
        else:
            size = size or 2048
            if size not in RSA_SIZES:
                raise VaultError(400, "BadParameter", "RSA key_size must be 2048, 3072 or 4096.")
            exponent = body.get("public_exponent") or 65537
            if exponent not in (3, 65537):
                raise VaultError(400, "BadParameter", "public_exponent must be 3 or 65537.")
            private = rsa.generate_private_key(public_exponent=exponent, key_size=size)
            stored = {"pem": _pkcs8_pem(private)}
        return self._add(name, family, hsm, body.get("key_ops"), stored, body)

    def _add(self, name: str, family: str, hsm: bool, key_ops, material: dict, body: dict) -> dict:
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise VaultError(400, "BadParameter", "attributes must be an object.")
        if key_ops is not None and (not isinstance(key_ops, list) or not all(isinstance(o, str) for o in key_ops)):
            raise VaultError(400, "BadParameter", "key_ops must be a list of operation names.")
        for stamp in ("nbf", "exp"):
            if attributes.get(stamp) is not None and (isinstance(attributes[stamp], bool)
                                                      or not isinstance(attributes[stamp], int)):
                raise VaultError(400, "BadParameter", f"attributes.{stamp} must be a unix timestamp.")
        tags = body.get("tags") or {}
        if not isinstance(tags, dict):
            raise VaultError(400, "BadParameter", "tags must be an object.")
        policy = _release_policy(body.get("release_policy"))
        exportable = bool(attributes.get("exportable", False))
        if exportable and policy is None:
            raise VaultError(400, "BadParameter", "Exportable keys must have a release policy.")
        if exportable and not hsm:
            raise VaultError(400, "BadParameter", "Only HSM-protected keys can be exportable.")
        now = int(time.time())
        record = {
            "version": uuid.uuid4().hex,
            "kty": family + ("-HSM" if hsm else ""),
            "key_ops": key_ops if key_ops is not None else DEFAULT_OPS[family],
            "material": material,
            "attributes": {"enabled": bool(attributes.get("enabled", True)), "exportable": exportable,
                           "nbf": attributes.get("nbf"), "exp": attributes.get("exp"),
                           "created": now, "updated": now},
            "tags": tags,
            "release_policy": policy,
        }
        self.store.add(name, record)
        return self._bundle(name, record)

    def _kid(self, name: str, record: dict) -> str:
        return f"{self.url}/keys/{name}/{record['version']}"

    def _public_jwk(self, name: str, record: dict) -> dict:
        out = {"kid": self._kid(name, record), "kty": record["kty"], "key_ops": record["key_ops"]}
        if "pem" in record["material"]:
            out.update(_rsa_public_numbers(record["material"]["pem"]))
        return out

    def _attributes(self, record: dict) -> dict:
        attributes = {k: v for k, v in record["attributes"].items() if v is not None}
        attributes.update(recoveryLevel="Recoverable+Purgeable", recoverableDays=90)
        return attributes

    def _bundle(self, name: str, record: dict) -> dict:
        bundle = {"key": self._public_jwk(name, record), "attributes": self._attributes(record),
                  "tags": record["tags"]}
        if record["release_policy"]:
            bundle["release_policy"] = record["release_policy"]
        return bundle

    def _deleted_bundle(self, name: str, record: dict) -> dict:
        deleted_at = int(time.time())
        return {**self._bundle(name, record), "recoveryId": f"{self.url}/deletedkeys/{name}",
                "deletedDate": deleted_at, "scheduledPurgeDate": deleted_at + 90 * 86400}

    def _list(self, name: str | None, query: dict) -> dict:
        if name is None:
            items = [(n, self.store.versions(n)[-1]) for n in self.store.names()]
        else:
            items = [(name, v) for v in self.store.versions(name)]
            if not items:
                raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        try:
            size = min(int(query.get("maxresults") or PAGE_SIZE), PAGE_SIZE)
            start = int(query.get("$skiptoken") or 0)
        except ValueError:
            raise VaultError(400, "BadParameter", "maxresults and $skiptoken must be integers.") from None
        if size < 1 or start < 0:
            raise VaultError(400, "BadParameter", "maxresults must be positive and $skiptoken not negative.")
        page = items[start:start + size]
        value = []
        for key_name, record in page:
            item = {"kid": f"{self.url}/keys/{key_name}" + ("" if name is None else f"/{record['version']}"),
                    "attributes": self._attributes(record), "tags": record["tags"]}
            value.append(item)
        result = {"value": value, "nextLink": None}
        if start + size < len(items):
            path = "/keys" if name is None else f"/keys/{name}/versions"
            result["nextLink"] = f"{self.url}{path}?api-version={query['api-version']}&$skiptoken={start + size}&maxresults={size}"
        return result

    # --- secure key release -------------------------------------------------------------

    def _release(self, name: str, version_text: str, body: dict, query: dict, allow) -> dict:
        """A release, recorded in `releases` whatever its outcome (a caller without the release
        role included: it is refused before the key or the token is looked at)."""
        try:
            allow(rbac.RELEASE, name)
            version = self._version(version_text) if version_text else None
            result = self._released(name, version, body, query)
        except VaultError:
            self.releases.append((name, "refused"))
            raise
        self.releases.append((name, "granted"))
        return result

    def _released(self, name: str, version: str | None, body: dict, query: dict) -> dict:
        record = self.store.get(name, version)
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise VaultError(400, "BadParameter", "Property target (the attestation token) is required.")
        enc = body.get("enc") or "CKM_RSA_AES_KEY_WRAP"
        attributes = record["attributes"]
        if not attributes["exportable"] or not record["release_policy"]:
            raise VaultError(403, "Forbidden", "Key is not exportable: it has no release policy.")
        now = time.time()
        if not attributes["enabled"] or (attributes.get("nbf") or 0) > now or (attributes.get("exp") or now + 1) <= now:
            raise VaultError(403, "Forbidden", "Operation release is not allowed on a disabled, expired or not yet valid key.")
        policy = policies.policy_from_json(_unb64url(record["release_policy"]["data"], "release_policy.data"))
        issuer, claims = self._verified_claims(target, policy)
        try:
            policies.evaluate(policy, issuer, claims)
        except policies.PolicyNotSatisfied as denied:
            raise VaultError(403, "Forbidden", str(denied)) from None
        wrapping_key = _runtime_wrapping_key(claims)
        if "k" in record["material"]:
            target_bytes = _unb64url(record["material"]["k"], "stored key")
        else:
            private = serialization.load_pem_private_key(record["material"]["pem"].encode(), password=None)
            target_bytes = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
        try:
            key_hsm = wrap_for_release(target_bytes, wrapping_key, enc)
        except ValueError as error:
            raise VaultError(400, "BadParameter", str(error)) from None
        released = self._public_jwk(name, record)
        released["key_hsm"] = key_hsm
        payload = {"request": {"api-version": query["api-version"], "enc": enc, "kid": released["kid"],
                               "nonce": body.get("nonce")},
                   "response": {"key": {"key": released, "attributes": self._attributes(record),
                                        "tags": record["tags"], "release_policy": record["release_policy"]}}}
        signed = jws.JWS(json.dumps(payload).encode())
        signed.add_signature(self._signing_key, alg="RS256",
                             protected={"alg": "RS256", "x5c": self._x5c, "kid": self._signing_key.thumbprint()})
        return {"value": signed.serialize(compact=True)}

    def _verified_claims(self, token: str, policy: dict) -> tuple[str, dict]:
        """(issuer, claims) of a token whose RS256 signature checks out against its issuer's
        JWKS, where the issuer is one of the policy's authorities and the token is current."""
        try:
            parsed = jws.JWS()
            parsed.deserialize(token)
            unverified = json.loads(parsed.objects["payload"])
        except (JWException, ValueError, KeyError, TypeError):
            raise VaultError(400, "BadParameter", "The target attestation token is not a JWT.") from None
        issuer = unverified.get("iss") if isinstance(unverified, dict) else None
        if not isinstance(issuer, str) or not issuer.startswith("https://"):
            raise VaultError(403, "Forbidden", "Attestation token has no https issuer.")
        wanted = policies.normalize_authority(issuer)
        if wanted not in {policies.normalize_authority(a) for a in policies.authorities(policy)}:
            raise VaultError(403, "Forbidden", "release policy not satisfied: the token's issuer is not an authority of the policy")
        keys = self._authority_keys(issuer)
        try:
            verified = jwt.JWT(algs=["RS256"], check_claims={"exp": None, "nbf": None, "iss": issuer},
                               expected_type="JWS")
            verified.leeway = TOKEN_LEEWAY_SECONDS
            verified.deserialize(token, keys)
        except jwt.JWTExpired:
            raise VaultError(403, "Forbidden", "Attestation token has expired.") from None
        except jwt.JWTNotYetValid:
            raise VaultError(403, "Forbidden", "Attestation token is not yet valid.") from None
        except jwt.JWTMissingClaim as missing:
            raise VaultError(403, "Forbidden", f"Attestation token is missing a required claim ({missing}).") from None
        except (JWException, ValueError):
            raise VaultError(403, "Forbidden", "Attestation token signature is not valid for its issuer's signing keys.") from None
        return issuer, json.loads(verified.claims)

    def _authority_keys(self, issuer: str) -> jwk.JWKSet:
        try:
            response = requests.get(issuer.rstrip("/") + "/certs", verify=str(self._tls.ca_path),
                                    timeout=JWKS_TIMEOUT_SECONDS)
            response.raise_for_status()
            return jwk.JWKSet.from_json(response.text)
        except (requests.RequestException, JWException, ValueError):
            raise VaultError(403, "Forbidden", "The attestation authority's signing keys could not be fetched.") from None


# --- helpers ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _rsa_public_numbers(private_pem: str) -> dict:
    """`n` and `e` of a stored RSA key. Cached: loading a private PEM re-checks the whole key
    (tens of ms for RSA-2048), which Key Vault does not spend on every read."""
    public = jwk.JWK.from_pem(private_pem.encode()).export_public(as_dict=True)
    return {"n": public["n"], "e": public["e"]}


def _family(kty) -> tuple[str, bool]:
    """("RSA" | "oct", is HSM) of a JSON Web Key type."""
    table = {"RSA": ("RSA", False), "RSA-HSM": ("RSA", True), "oct": ("oct", False), "oct-HSM": ("oct", True)}
    if not isinstance(kty, str) or kty not in table:
        raise VaultError(400, "BadParameter", "Key type (kty) must be one of RSA, RSA-HSM, oct, oct-HSM.")
    return table[kty]


def _pkcs8_pem(private) -> str:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()


def _rsa_private_pem(key: dict) -> str:
    fields = ("n", "e", "d", "p", "q", "dp", "dq", "qi")
    if any(not key.get(f) for f in fields):
        raise VaultError(400, "BadParameter", "RSA key import needs the private key (n, e, d, p, q, dp, dq, qi).")
    numbers = {f: int.from_bytes(_unb64url(key[f], f"key.{f}"), "big") for f in fields}
    try:
        public = rsa.RSAPublicNumbers(numbers["e"], numbers["n"])
        private = rsa.RSAPrivateNumbers(numbers["p"], numbers["q"], numbers["d"], numbers["dp"], numbers["dq"],
                                        numbers["qi"], public).private_key()
    except ValueError:
        raise VaultError(400, "BadParameter", "The RSA key parameters are inconsistent.") from None
    if private.key_size not in RSA_SIZES:
        raise VaultError(400, "BadParameter", "RSA keys must be 2048, 3072 or 4096 bits.")
    return _pkcs8_pem(private)


def _release_policy(value) -> dict | None:
    """The stored form of a request's release policy (validated against the grammar)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value.get("data"):
        raise VaultError(400, "BadParameter", "release_policy needs data (base64url of the policy JSON).")
    content_type = value.get("contentType") or policies.CONTENT_TYPE
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise VaultError(400, "BadParameter", "release_policy contentType must be application/json.")
    data = _unb64url(value["data"], "release_policy.data")
    try:
        policies.policy_from_json(data)
    except policies.ReleasePolicyError as error:
        raise VaultError(400, "BadParameter", f"Invalid release policy: {error}") from None
    return {"contentType": content_type, "data": _b64url(data), "immutable": bool(value.get("immutable", False))}


def _runtime_wrapping_key(claims: dict) -> jwk.JWK:
    """The first RSA encryption key in the token's x-ms-runtime.keys (SKR wraps to it)."""
    runtime = claims.get("x-ms-runtime")
    keys = runtime.get("keys") if isinstance(runtime, dict) else None
    for candidate in keys if isinstance(keys, list) else []:
        if isinstance(candidate, dict) and candidate.get("kty") == "RSA" and \
                "encrypt" in (candidate.get("key_ops") or ["encrypt"]):
            try:
                return jwk.JWK(**{k: v for k, v in candidate.items() if k in ("kty", "n", "e", "kid")})
            except (JWException, ValueError, TypeError):
                break
    raise VaultError(403, "Forbidden", "Attestation token carries no RSA wrapping key in x-ms-runtime.keys.")


def _pem_to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
