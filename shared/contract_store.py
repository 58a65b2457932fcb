"""Accepted contracts, stored once by contract id; a replay of the same signed contract
finds the stored record, a different contract under the same id is a conflict. Each input
blob is indexed to the contracts that name it, since one upload may serve many contracts."""
from __future__ import annotations

import hashlib

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
        """Store the contract unless already there; returns (stored record, newly stored).
        The input index is written first (idempotently), so an arrival that finds the record
        also finds the contract through its inputs."""
        name = f"{payload['contract_id']}.json"
        record = {"contract_id": payload["contract_id"], "digest": digest, "payload": payload,
                  "envelope": envelope_b64, "seqno": seqno, "accepted": utc_now()}
        existing = self._blobs.get(name)
        if existing is None:
            for item in contract_inputs(payload):
                self._blobs.create(_index_name(item["blob"], payload["contract_id"]), {})
            if self._blobs.create(name, record):
                return record, True
            existing = self._blobs.get(name)
        if existing["digest"] != digest:
            raise ContractConflict(
                f"contract {payload['contract_id']} was already accepted with different content")
        return existing, False

    def naming(self, blob_path: str) -> list[str]:
        """Ids of the accepted contracts that name input `container/blob`."""
        prefix = _index_name(blob_path, "")
        return [name[len(prefix):] for name, _ in self._blobs.list(prefix)]

    def get(self, contract_id: str) -> dict | None:
        return self._blobs.get(f"{contract_id}.json")


def _index_name(blob_path: str, contract_id: str) -> str:
    return f"inputs/{hashlib.sha256(blob_path.encode()).hexdigest()}/{contract_id}"
