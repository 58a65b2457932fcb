"""Accepted contracts, stored once by contract id; a replay of the same signed contract
finds the stored record, a different contract under the same id is a conflict."""
from __future__ import annotations

from azure.storage.blob import BlobServiceClient

from shared import storage_names
from shared.json_blobs import JsonBlobs
from shared.run_records import utc_now


class ContractConflict(Exception):
    """Another contract was already accepted under this id."""


def contract_inputs(payload: dict) -> list[dict]:
    """Every encrypted input a run of this contract needs, with where it must arrive."""
    inputs = [{"kind": "model", "name": "model", **payload["tdc"]["model"]}]
    for tdp in payload["tdps"]:
        for dataset in tdp["datasets"]:
            inputs.append({"kind": "dataset", **dataset})
    return inputs


def split_blob_path(path: str) -> tuple[str, str]:
    """`datasets/c1/icmr.ccr` -> (`datasets`, `c1/icmr.ccr`)."""
    container, _, name = path.partition("/")
    return container, name


class ContractStore:
    def __init__(self, service: BlobServiceClient):
        self._blobs = JsonBlobs(service, storage_names.CONTRACTS)

    def accept(self, payload: dict, digest: str, envelope_b64: str, seqno: str | None) -> tuple[dict, bool]:
        """Store the contract unless already there; returns (stored record, newly stored)."""
        name = f"{payload['contract_id']}.json"
        record = {"contract_id": payload["contract_id"], "digest": digest, "payload": payload,
                  "envelope": envelope_b64, "seqno": seqno, "accepted": utc_now()}
        if self._blobs.create(name, record):
            return record, True
        existing = self._blobs.get(name)
        if existing["digest"] != digest:
            raise ContractConflict(
                f"contract {payload['contract_id']} was already accepted with different content")
        return existing, False

    def get(self, contract_id: str) -> dict | None:
        return self._blobs.get(f"{contract_id}.json")
