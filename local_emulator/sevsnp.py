"""Simulated AMD SEV-SNP hardware: the signing root that produces attestation reports.

On real hardware the AMD secure processor signs a report (with the chip's VCEK, ECDSA P-384)
whose HOST_DATA is fixed at launch (ACI puts the sha256 of the CCE policy there) and whose
REPORT_DATA the guest chooses (the SKR sidecar puts the sha256 of its runtime data, i.e. its
ephemeral public key). Here the ACI twin holds the `HardwareRoot` and asks it for reports only
for the policy it launched a group with; the attestation twin trusts its public key.

A report is a compact JWS (ES384, signed by the root) over the report fields; `verify_report`
checks it. The root's private key is persisted 0600 under `<emulator_dir>/sevsnp/`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from local_emulator.tls import write_private

REPORT_VERSION = 2
REPORT_DATA_BYTES = 64
# Launch measurement of the (simulated) Azure utility VM the confidential containers run in.
UVM_MEASUREMENT = hashlib.sha384(b"ccr-local-emulator confidential container UVM v1").hexdigest()


class ReportError(ValueError):
    """A report that is malformed or not signed by a trusted hardware root."""


class HardwareRoot:
    """The simulated secure processor's signing key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        self._key = jwk.JWK.from_pyca(private_key)
        self.public_pem: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def load_or_create(cls, emulator_dir: str | Path) -> "HardwareRoot":
        path = Path(emulator_dir) / "sevsnp" / "hardware_root.pem"
        if path.exists():
            return cls(serialization.load_pem_private_key(path.read_bytes(), password=None))
        private = ec.generate_private_key(ec.SECP384R1())
        write_private(path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        return cls(private)

    @property
    def chip_id(self) -> str:
        return self._key.thumbprint()

    def report(self, hostdata_hex: str, report_data: bytes, is_debuggable: bool = False) -> bytes:
        """A signed report binding the launch-time host data and the guest's report data."""
        host_data = bytes.fromhex(hostdata_hex)
        if len(host_data) != 32:
            raise ValueError("host data is 32 bytes (sha256 of the CCE policy)")
        if len(report_data) > REPORT_DATA_BYTES:
            raise ValueError(f"report data is at most {REPORT_DATA_BYTES} bytes")
        body = {
            "version": REPORT_VERSION,
            "guest_svn": 1,
            "policy": {"debug_allowed": bool(is_debuggable), "migrate_ma": False, "smt_allowed": True},
            "host_data": host_data.hex(),
            "report_data": report_data.ljust(REPORT_DATA_BYTES, b"\0").hex(),
            "measurement": UVM_MEASUREMENT,
            "chip_id": self.chip_id,
            "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        }
        signed = jws.JWS(json.dumps(body, sort_keys=True).encode())
        signed.add_signature(self._key, alg="ES384", protected={"alg": "ES384", "kid": self.chip_id})
        return signed.serialize(compact=True).encode()


def verify_report(report: bytes, trusted_public_pems: list[bytes]) -> dict:
    """The report's fields, if one of the trusted roots signed it; ReportError otherwise."""
    try:
        parsed = jws.JWS()
        parsed.deserialize(report.decode("ascii"))
    except (JWException, ValueError, UnicodeDecodeError):
        raise ReportError("the SEV-SNP report is malformed") from None
    for pem in trusted_public_pems:
        try:
            parsed.verify(jwk.JWK.from_pem(pem), alg="ES384")
        except JWException:
            continue
        try:
            body = json.loads(parsed.payload)
            bytes.fromhex(body["host_data"]), bytes.fromhex(body["report_data"])
            body["policy"]["debug_allowed"], body["measurement"]
        except (ValueError, KeyError, TypeError):
            raise ReportError("the SEV-SNP report is missing fields") from None
        return body
    raise ReportError("the SEV-SNP report is not signed by a trusted hardware root")
