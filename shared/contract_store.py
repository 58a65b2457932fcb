"""Accepted contracts. A contract's identity is its id *and* its digest: each is stored under
`<contract_id>/<digest>.json`, so another contract under the same id (a squatter's, or new terms)
is another contract with its own run and blocks nothing; a replay of the same signed contract
finds the stored record. Each input blob is indexed to the contracts that name it, since one
upload may serve many contracts; a contract allowing continued training is also indexed by each
of its datasets (provider name and dataset name), where a later version of it arrives; one with
an inference workload by its digest, which its requesters' batch paths name."""
from __future__ import annotations

import hashlib

from azure.storage.blob import BlobServiceClient

from shared import contract as contracts
from shared import storage_names
from shared.did import did_name
from shared.json_blobs import JsonBlobs
from shared.run_records import utc_now


def contract_key(contract_id: str, digest: str) -> str:
    """`<contract_id>/<digest>`: unambiguous, since a contract id never contains '/'."""
    return f"{contract_id}/{digest}"


def split_contract_key(key: str) -> tuple[str, str]:
    contract_id, _, digest = key.rpartition("/")
    return contract_id, digest


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
        """Store the contract (contract_id, digest) unless already there; returns (stored record,
        newly stored). The input index is written first (idempotently), so an arrival that finds
        the record also finds the contract through its inputs."""
        key = contract_key(payload["contract_id"], digest)
        record = {"contract_id": payload["contract_id"], "digest": digest, "payload": payload,
                  "envelope": envelope_b64, "seqno": seqno, "accepted": utc_now()}
        existing = self._blobs.get(f"{key}.json")
        if existing is None:
            for item in contract_inputs(payload):
                self._blobs.create(_index_name(item["blob"], key), {})
            if contracts.inference(payload) is not None:  # its requesters' batches name it by digest
                self._blobs.create(_inferring_name(digest, key), {})
            if contracts.continued_training(payload):  # a later version of its datasets may continue it
                for did, dataset in contracts.datasets(payload):
                    self._blobs.create(_continuing_name(did_name(did), dataset["name"], key), {})
            if self._blobs.create(f"{key}.json", record):
                return record, True
            existing = self._blobs.get(f"{key}.json")
        return existing, False

    def naming(self, blob_path: str) -> list[tuple[str, str]]:
        """(contract_id, digest) of each accepted contract that names input `container/blob`."""
        prefix = _index_name(blob_path, "")
        return [split_contract_key(name[len(prefix):]) for name, _ in self._blobs.list(prefix)]

    def continuing(self, party: str, dataset: str) -> list[tuple[str, str]]:
        """(contract_id, digest) of each accepted contract allowing continued training that names
        dataset `dataset` of the provider named `party` (`shared.did.did_name`)."""
        prefix = _continuing_name(party, dataset, "")
        return [split_contract_key(name[len(prefix):]) for name, _ in self._blobs.list(prefix)]

    def inferring(self, digest: str) -> list[tuple[str, str]]:
        """(contract_id, digest) of the accepted contract with this digest that has an inference
        workload (none or one: the digest names the terms, the id is among them)."""
        prefix = _inferring_name(digest, "")
        return [split_contract_key(name[len(prefix):]) for name, _ in self._blobs.list(prefix)]

    def get(self, contract_id: str, digest: str) -> dict | None:
        return self._blobs.get(f"{contract_key(contract_id, digest)}.json")


def _continuing_name(party: str, dataset: str, key: str) -> str:
    return f"continuing/{hashlib.sha256(f'{party}/{dataset}'.encode()).hexdigest()}/{key}"


def _inferring_name(digest: str, key: str) -> str:
    return f"inferring/{digest}/{key}"


def _index_name(blob_path: str, key: str) -> str:
    return f"inputs/{hashlib.sha256(blob_path.encode()).hexdigest()}/{key}"
