"""finish_run's check of a claimed output, against Azurite: what makes a trainer's "succeeded"
believable (the whole run that ends failed is in test_run_failures.py)."""
from __future__ import annotations

import io
import secrets
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, generate_blob_sas

from orchestrations.run_steps import output_problem
from shared import package, storage_names

OUTPUT_KID = "output-1a2b3c"
PAYLOAD = {"tdc": {"output": {"key_id": OUTPUT_KID}}}


def _package(key_id: str, plaintext: bytes) -> tuple[bytes, str]:
    encrypted = io.BytesIO()
    manifest = package.encrypt_stream(io.BytesIO(plaintext), encrypted, secrets.token_bytes(32), key_id,
                                      "application/vnd.ccr.output+zip")
    return encrypted.getvalue(), manifest.blake3


@pytest.fixture
def output(azurite):
    service = BlobServiceClient.from_connection_string(azurite)
    if not service.get_container_client(storage_names.OUTPUTS).exists():
        service.create_container(storage_names.OUTPUTS)
    yield service.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(f"run-{uuid.uuid4().hex[:16]}"))
    service.close()


def test_a_genuine_output_passes(output):
    blob, digest = _package(OUTPUT_KID, b"the model")
    output.upload_blob(blob)
    assert output_problem(output, PAYLOAD, {"output_blake3": digest}) is None


def test_a_missing_output_is_named_missing(output):
    assert output_problem(output, PAYLOAD, {"output_blake3": "0" * 64}) == "missing"


@pytest.mark.parametrize("case, expected", [
    ("not a package", "invalid (not a valid package: "),
    ("empty", "invalid (not a valid package: "),
    ("another key", "invalid (not encrypted under the contract's output key)"),
    ("another digest", "invalid (its manifest digest is not the one the trainer reported)"),
])
def test_an_invalid_output_is_named_invalid(output, case, expected):
    blob, digest = _package("https://vault.test/keys/someone-else/1" if case == "another key" else OUTPUT_KID,
                            b"the model")
    if case == "not a package":
        blob = secrets.token_bytes(4096)
    elif case == "empty":
        blob = b""
    elif case == "another digest":
        digest = "0" * 64
    output.upload_blob(blob)
    assert output_problem(output, PAYLOAD, {"output_blake3": digest}).startswith(expected)



def test_an_output_storage_refuses_to_show_is_named_unverifiable(output, azurite):
    """A 4xx other than 404 (here 403: a SAS signed for another blob) cannot prove the output."""
    blob, digest = _package(OUTPUT_KID, b"the model")
    output.upload_blob(blob)
    service = BlobServiceClient.from_connection_string(azurite)
    token = generate_blob_sas(service.account_name, output.container_name, "another/blob.ccr",
                              account_key=service.credential.account_key, permission=BlobSasPermissions(read=True),
                              expiry=datetime.now(timezone.utc) + timedelta(minutes=5))
    refused = BlobClient.from_blob_url(f"{output.url}?{token}")
    assert output_problem(refused, PAYLOAD, {"output_blake3": digest}) == "unverifiable (storage answered 403)"
    assert output_problem(output, PAYLOAD, {"output_blake3": digest}) is None  # the blob itself is fine
