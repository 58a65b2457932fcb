"""JSON documents in Blob Storage with optimistic concurrency (ETags), so concurrent
triggers and activities never overwrite each other's changes."""
from __future__ import annotations

import json
from typing import Callable, Iterator

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

_JSON = ContentSettings(content_type="application/json")


class JsonBlobs:
    """A container of small JSON documents keyed by blob name."""

    def __init__(self, service: BlobServiceClient, container: str):
        self._container: ContainerClient = service.get_container_client(container)
        self._ensured = False

    def _ensure(self) -> None:
        if not self._ensured:
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass
            self._ensured = True

    def get(self, name: str) -> dict | None:
        self._ensure()
        try:
            return json.loads(self._container.download_blob(name).readall())
        except ResourceNotFoundError:
            return None

    def create(self, name: str, document: dict) -> bool:
        """Store `document` unless `name` exists; True when this call created it."""
        self._ensure()
        try:
            self._container.upload_blob(name, json.dumps(document, sort_keys=True),
                                        overwrite=False, content_settings=_JSON)
            return True
        except ResourceExistsError:
            return False

    def update(self, name: str, mutate: Callable[[dict], None], default: dict | None = None) -> dict:
        """Read-modify-write with ETag checks, retried on conflict; returns the new document."""
        self._ensure()
        blob = self._container.get_blob_client(name)
        for _ in range(50):
            try:
                downloader = blob.download_blob()
                document, etag = json.loads(downloader.readall()), downloader.properties.etag
            except ResourceNotFoundError:
                if default is None:
                    raise KeyError(name) from None
                document, etag = json.loads(json.dumps(default)), None
            mutate(document)
            try:
                if etag is None:
                    blob.upload_blob(json.dumps(document, sort_keys=True), overwrite=False,
                                     content_settings=_JSON)
                else:
                    blob.upload_blob(json.dumps(document, sort_keys=True), overwrite=True,
                                     etag=etag, match_condition=MatchConditions.IfNotModified,
                                     content_settings=_JSON)
                return document
            except (ResourceModifiedError, ResourceExistsError):
                continue
        raise RuntimeError(f"could not update {name}: too many concurrent writers")

    def list(self, prefix: str = "") -> Iterator[tuple[str, dict]]:
        self._ensure()
        for item in self._container.list_blobs(name_starts_with=prefix or None):
            document = self.get(item.name)
            if document is not None:
                yield item.name, document
