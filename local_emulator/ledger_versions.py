"""The ledger twin's record of dataset versions (shared/version_declaration.py): a provider's
versions of its own datasets, in strictly increasing order, each package digest once.

A contract naming a dataset version above 1 is recorded only if that version's declared package
is the one it pins (`declares`, checked by the ledger's `register`).

Why here and not in the contract: new data arrives after the contract is signed, and the
ledger is the one public, append-only place every party and the clean room read. A version is
recorded only when
  - it verifies against the provider's DID key recorded on this ledger (nobody declares a
    version of another's dataset),
  - the dataset has a recorded lifetime budget (a version belongs to a declared population),
  - its number is above every version recorded for that dataset (no replay, no reordering),
  - its package digest was never declared by that provider, under any of its datasets (one
    package cannot come back as a "new" version). The scope is the provider: package digests
    are public (contracts carry them), so a digest index shared by all parties would let anyone
    squat a victim's next package digest under a dataset of their own.

HTTP API (routed by local_emulator/ledger.py)
  POST /versions  body: a version declaration (compact JWS) -> 201 {"identity", "version", "digest"};
                  400 malformed, 403 not signed by the provider's recorded DID key, 409 refused
                  (no budget declared, not after the latest version, digest declared before); nothing
                  is recorded unless 201
  GET  /versions?provider=DID&dataset=NAME -> {"declarations": [JWS, ...]} in version order (public); 404
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from collections.abc import Callable

from local_emulator.tls import write_private
from shared import did as dids
from shared import package
from shared import version_declaration as versions

log = logging.getLogger(__name__)


class VersionConflict(ValueError):
    """A well-signed declaration the record refuses: out of order, digest reused, no budget."""


class VersionRecords:
    """One JSON file per provider: {"datasets": {name: [declaration, ...]}} in version order."""

    def __init__(self, directory: Path, resolve_did: Callable[[str], dict],
                 has_budget: Callable[[str, str], bool]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._resolve_did, self._has_budget = resolve_did, has_budget
        self._lock = threading.Lock()

    def _path(self, provider: str) -> Path:
        return self.directory / f"{hashlib.sha256(provider.encode()).hexdigest()}.json"

    def _load(self, provider: str) -> dict:
        path = self._path(provider)
        return json.loads(path.read_text()) if path.exists() else {"datasets": {}}

    def declare(self, token: str) -> dict:
        """Record a version declaration; its claims. VersionDeclarationError if malformed or not
        the provider's, VersionConflict if the record refuses it (nothing recorded either way)."""
        try:
            claims = versions.verify(token, self._resolve_did)
        except dids.DidError as problem:
            raise versions.VersionDeclarationError(str(problem)) from None
        provider, dataset, number = claims["provider"], claims["dataset"], claims["version"]
        if not self._has_budget(provider, dataset):
            raise VersionConflict(f"{versions.identity(claims)} has no declared lifetime budget: declare it first "
                                  "(`ccr tdp declare-budget`), then its versions")
        with self._lock:
            record = self._load(provider)
            declared = record["datasets"].get(dataset, [])
            if declared:
                latest = versions.claims(declared[-1])["version"]
                if number <= latest:
                    raise VersionConflict(f"version {number} of {versions.identity(claims)} is not after the latest "
                                          f"declared version {latest}: versions strictly increase")
            for name, tokens in record["datasets"].items():
                for earlier in map(versions.claims, tokens):
                    if versions.pin(earlier) == versions.pin(claims):
                        raise VersionConflict(f"package {claims['digest_algorithm']} {claims['digest']} was already "
                                              f"declared as version {earlier['version']} of {name}: a new version "
                                              "is a new package")
            record["datasets"][dataset] = declared + [token]
            write_private(self._path(provider), json.dumps(record).encode())
        return claims

    def recorded(self, provider: str, dataset: str) -> list[str]:
        """The dataset's declarations in version order (empty if none)."""
        with self._lock:
            return list(self._load(provider)["datasets"].get(dataset, []))

    def declares(self, provider: str, dataset: dict) -> bool:
        """Whether the provider declared a contract dataset entry's package as its `version`."""
        pinned = package.pinned_commitment(dataset)
        return pinned is not None and any(
            claims["version"] == dataset["version"] and versions.pin(claims) == dict([pinned])
            for claims in map(versions.claims, self.recorded(provider, dataset["name"])))

    # --- HTTP ----------------------------------------------------------------------------

    def post(self, body: bytes):
        token = body.decode("ascii", "replace").strip()
        try:
            versions.claims(token)
        except versions.VersionDeclarationError as problem:
            return 400, {"error": str(problem)}, {}
        try:
            claims = self.declare(token)
        except versions.VersionDeclarationError as problem:
            log.warning("ledger refused a version declaration: %s", problem)
            return 403, {"error": str(problem)}, {}
        except VersionConflict as problem:
            return 409, {"error": str(problem)}, {}
        return 201, {"identity": versions.identity(claims), "version": claims["version"],
                     "digest": versions.digest(token)}, {}

    def get(self, query: dict):
        provider, dataset = query.get("provider"), query.get("dataset")
        declared = self.recorded(provider, dataset) if provider and dataset else []
        if not declared:
            return 404, {"error": "no version declared for that provider and dataset"}, {}
        return 200, {"declarations": declared}, {}
