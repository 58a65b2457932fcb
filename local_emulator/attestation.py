"""Twin of Microsoft Azure Attestation (MAA) for SEV-SNP confidential containers.

`POST /attest/SevSnpVm?api-version=2022-08-01` takes MAA's request shape: `report` (base64url
of `{"SnpReport": base64url(report)}`), `runtimeData` and `initTimeData` (`{"data": base64url,
"dataType": "JSON"|"Binary"}`), `nonce`. It verifies the report against the trusted hardware
roots (local_emulator.sevsnp), refuses (400, with the reason) a report whose host data is not
the sha256 of the init-time data (the CCE policy) or whose report data does not start with the
sha256 of the runtime data, and answers `{"token": <RS256 JWT>}` with the claims SKR policies
check. `GET /certs` serves the signing key as a JWKS; tokens carry `jku`/`kid`.

The signing key is persisted 0600 under the twin's data dir, so tokens stay verifiable across
restarts. Nothing here logs requests or tokens."""
from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk, jwt

from local_emulator.sevsnp import UVM_MEASUREMENT, ReportError, verify_report
from local_emulator.tls import LoopbackServer, LoopbackTls, write_private

API_VERSION = "2022-08-01"
TOKEN_LIFETIME_SECONDS = 8 * 3600


class AttestationError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _unb64url(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise AttestationError(400, "InvalidParameter", f"{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise AttestationError(400, "InvalidParameter", f"{what} is not valid base64url") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def build_attest_request(report: bytes, runtime_data: bytes, init_time_data: bytes, nonce: int | None = None) -> dict:
    """The body of `POST /attest/SevSnpVm` (as Microsoft's SKR sidecar sends it): the report,
    the runtime data (JSON: the guest's public keys) and the init-time data (the CCE policy)."""
    body = {"report": _b64url(json.dumps({"SnpReport": _b64url(report)}).encode()),
            "runtimeData": {"data": _b64url(runtime_data), "dataType": "JSON"},
            "initTimeData": {"data": _b64url(init_time_data), "dataType": "Binary"}}
    if nonce is not None:
        body["nonce"] = nonce
    return body


def _load_or_create_signing_key(path: Path) -> jwk.JWK:
    if path.exists():
        return jwk.JWK.from_pem(path.read_bytes())
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_private(path, pem)
    return jwk.JWK.from_pem(pem)


class MaaTwin:
    """`start()`, `stop()`, `url` (the authority that release policies name)."""

    def __init__(self, data_dir: str | Path, tls: LoopbackTls, trusted_roots: list[bytes], host: str = "127.0.0.1",
                 port: int = 0, token_lifetime_seconds: int = TOKEN_LIFETIME_SECONDS):
        if not trusted_roots:
            raise ValueError("the attestation twin needs at least one trusted hardware root")
        self._signing_key = _load_or_create_signing_key(Path(data_dir) / "maa_signing_key.pem")
        self._kid = self._signing_key.thumbprint()
        self._trusted_roots = list(trusted_roots)
        self._lifetime = token_lifetime_seconds
        self._server = LoopbackServer(self._route, tls.server_context(), port=port, host=host, name="maa-twin")

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> "MaaTwin":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def jwks(self) -> dict:
        public = self._signing_key.export_public(as_dict=True)
        public.update(kid=self._kid, alg="RS256", use="sig")
        return {"keys": [public]}

    def sign_claims(self, claims: dict) -> str:
        """An RS256 token from this authority; iss/iat/nbf/exp/jti are filled in unless given
        (a claim given as None is left out)."""
        now = int(time.time())
        full = {"iss": self.url, "iat": now, "nbf": now, "exp": now + self._lifetime, "jti": uuid.uuid4().hex}
        full.update(claims)
        full = {name: value for name, value in full.items() if value is not None}
        token = jwt.JWT(header={"alg": "RS256", "typ": "JWT", "kid": self._kid, "jku": f"{self.url}/certs"},
                        claims=full)
        token.make_signed_token(self._signing_key)
        return token.serialize()

    # --- HTTP ----------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict, headers, body: bytes):
        try:
            if method == "GET" and path == "/certs":
                return 200, self.jwks(), {}
            if method == "GET" and path == "/.well-known/openid-configuration":
                return 200, {"issuer": self.url, "jwks_uri": f"{self.url}/certs"}, {}
            if method == "POST" and path.lower() == "/attest/sevsnpvm":
                if not query.get("api-version"):
                    raise AttestationError(400, "InvalidParameter", "the api-version query parameter is required")
                return 200, {"token": self._attest(body)}, {}
            raise AttestationError(404, "NotFound", "no such operation")
        except AttestationError as error:
            return error.status, {"error": {"code": error.code, "message": str(error)}}, {}

    def _attest(self, body: bytes) -> str:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            raise AttestationError(400, "InvalidParameter", "the request body is not valid JSON") from None
        if not isinstance(request, dict):
            raise AttestationError(400, "InvalidParameter", "the request body must be a JSON object")
        report = self._report(request.get("report"))
        runtime_bytes, runtime_claim = self._attested_data(request.get("runtimeData"), "runtimeData")
        init_bytes, _ = self._attested_data(request.get("initTimeData"), "initTimeData")
        if hashlib.sha256(init_bytes).hexdigest() != report["host_data"]:
            raise AttestationError(400, "InvalidParameter",
                                   "the report's host data is not the sha256 of the presented initTimeData (CCE policy)")
        if bytes.fromhex(report["report_data"])[:32] != hashlib.sha256(runtime_bytes).digest():
            raise AttestationError(400, "InvalidParameter",
                                   "the report's report data is not the sha256 of the presented runtimeData")
        debuggable = bool(report["policy"]["debug_allowed"])
        claims = {
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-uvm" if report["measurement"] == UVM_MEASUREMENT
            else "non-compliant-uvm",
            "x-ms-sevsnpvm-hostdata": report["host_data"],
            "x-ms-sevsnpvm-is-debuggable": debuggable,
            "x-ms-sevsnpvm-launchmeasurement": report["measurement"],
            "x-ms-sevsnpvm-reportdata": report["report_data"],
            "x-ms-sevsnpvm-guestsvn": report["guest_svn"],
            "x-ms-sevsnpvm-chipid": report["chip_id"],
        }
        if runtime_claim is not None:
            claims["x-ms-runtime"] = runtime_claim
        if request.get("nonce") is not None:
            claims["nonce"] = request["nonce"]
        return self.sign_claims(claims)

    def _report(self, value) -> dict:
        bundle = _unb64url(value, "report")
        try:
            snp_report = json.loads(bundle)["SnpReport"]
        except (ValueError, KeyError, TypeError):
            raise AttestationError(400, "InvalidParameter", "report must be base64url of {\"SnpReport\": ...}") from None
        try:
            return verify_report(_unb64url(snp_report, "SnpReport"), self._trusted_roots)
        except ReportError as error:
            raise AttestationError(400, "InvalidParameter", str(error)) from None

    @staticmethod
    def _attested_data(value, what: str) -> tuple[bytes, object]:
        """(raw bytes, claim value for JSON data) of a runtimeData / initTimeData member."""
        if not isinstance(value, dict) or "data" not in value:
            raise AttestationError(400, "InvalidParameter", f"{what} with data and dataType is required")
        raw = _unb64url(value["data"], f"{what}.data")
        kind = str(value.get("dataType", "Binary")).lower()
        if kind == "json":
            try:
                return raw, json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise AttestationError(400, "InvalidParameter", f"{what} has dataType JSON but is not JSON") from None
        if kind == "binary":
            return raw, None
        raise AttestationError(400, "InvalidParameter", f"{what}.dataType must be JSON or Binary")
