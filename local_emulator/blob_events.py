"""`Microsoft.Storage.BlobCreated` events for an Azurite account, which emits none: what a
storage account's Event Grid system topic would carry, synthesised by polling the watched
containers.

One event per created blob version: a blob name not seen before, or a new ETag for one seen
(an overwrite), makes one event; a deleted blob is forgotten, so creating it again makes another.
Like Event Grid, nothing is sent for what existed before anyone subscribed: when a container
is first watched (the subscription is created) its blobs at that moment are the baseline and
make no event; a container that appears later is new, so each of its blobs makes one. What was
seen persists, so a restarted twin sends what was written while it was down, and nothing twice.

The event is the Event Grid schema of the real one: subject
`/blobServices/default/containers/<container>/blobs/<name>`, topic the storage account's
resource id, data `api` (PutBlob, PutBlockList when the blob has committed blocks, CopyBlob for
a copy), `clientRequestId`, `requestId`, `eTag` (unquoted), `contentType`, `contentLength`,
`blobType`, `url` (no SAS), `sequencer` (increasing) and `storageDiagnostics.batchId`; the
request ids are fresh UUIDs (Azurite keeps none). Blob contents are never read.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from local_emulator.tls import write_private

log = logging.getLogger(__name__)

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBJECT_PREFIX = "/blobServices/default/containers/"


def container_of_filter(subject_begins_with: str) -> str | None:
    """The container a subscription's subjectBeginsWith names, or None (every container)."""
    if not subject_begins_with.lower().startswith(SUBJECT_PREFIX.lower()):
        return None
    container = subject_begins_with[len(SUBJECT_PREFIX):].split("/", 1)[0]
    return container or None


class BlobCreatedSource:
    """Polls one account's watched containers and hands new blob versions to `publish(events)`.
    `watch(container)` / `watch_all()` take the baseline; hold `lock` around a watch and the
    subscription it serves, so no blob falls between the two."""

    def __init__(self, state_path: Path, connection: str, topic_id: str, publish: Callable[[list[dict]], object],
                 poll_seconds: float = 1.0):
        self.state_path, self.topic_id, self.publish, self.poll_seconds = Path(state_path), topic_id, publish, poll_seconds
        self.service = BlobServiceClient.from_connection_string(connection)
        self.lock = threading.RLock()
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.seen: dict[str, dict[str, str]] = state.get("seen", {})   # container -> blob name -> etag
        self.all_containers: bool = state.get("all_containers", False)
        self.sequencer: int = state.get("sequencer", 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> "BlobCreatedSource":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="eventgrid-blob-events", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self.service.close()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception as error:  # noqa: BLE001 - Azurite restarting, say: try again next round
                log.warning("blob events: polling failed (%s)", type(error).__name__)

    # --- what is watched ----------------------------------------------------------------

    def watch(self, container: str) -> None:
        with self.lock:
            if container not in self.seen:
                self.seen[container] = self._listing(container)
                self._save()

    def watch_all(self) -> None:
        with self.lock:
            for item in self.service.list_containers():
                self.seen.setdefault(item.name, self._listing(item.name))
            self.all_containers = True
            self._save()

    def _listing(self, container: str) -> dict[str, str]:
        try:
            return {blob.name: blob.etag.strip('"')
                    for blob in self.service.get_container_client(container).list_blobs()}
        except ResourceNotFoundError:
            return {}

    # --- polling ------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Publish one event per blob version created since the last poll; how many."""
        with self.lock:
            if self.all_containers:
                for item in self.service.list_containers():
                    self.seen.setdefault(item.name, {})   # appeared after the subscription: all of it is new
            events, changed = [], False
            for container, seen in self.seen.items():
                client = self.service.get_container_client(container)
                try:
                    current = {blob.name: blob for blob in client.list_blobs(include=["copy"])}
                except ResourceNotFoundError:
                    current = {}
                for name in [n for n in seen if n not in current]:
                    del seen[name]
                    changed = True
                for name, blob in current.items():
                    etag = blob.etag.strip('"')
                    if seen.get(name) != etag:
                        event = self._event(client, blob, etag)
                        if event is None:
                            continue     # deleted between the listing and its block list: no version to report
                        events.append(event)
                        seen[name] = etag
            if events:
                self.publish(events)
            if events or changed:
                self._save()
            return len(events)

    def _event(self, container, blob, etag: str) -> dict | None:
        blob_client = container.get_blob_client(blob.name)
        if blob.copy is not None and blob.copy.id:
            api = "CopyBlob"
        else:
            try:
                committed, _ = blob_client.get_block_list("committed") if blob.blob_type.value == "BlockBlob" else ([], [])
            except ResourceNotFoundError:
                return None
            api = "PutBlockList" if committed else "PutBlob"
        self.sequencer += 1
        content_type = blob.content_settings.content_type if blob.content_settings else None
        return {
            "id": str(uuid.uuid4()),
            "topic": self.topic_id,
            "subject": f"{SUBJECT_PREFIX}{container.container_name}/blobs/{blob.name}",
            "eventType": BLOB_CREATED,
            "eventTime": blob.last_modified.isoformat().replace("+00:00", "Z"),
            "data": {
                "api": api,
                "clientRequestId": str(uuid.uuid4()),
                "requestId": str(uuid.uuid4()),
                "eTag": etag,
                "contentType": content_type or "application/octet-stream",
                "contentLength": blob.size,
                "blobType": blob.blob_type.value,
                "url": f"{container.url.split('?', 1)[0]}/{quote(blob.name)}",
                "sequencer": f"{self.sequencer:032X}",
                "storageDiagnostics": {"batchId": str(uuid.uuid4())},
            },
            "dataVersion": "",
            "metadataVersion": "1",
        }

    def _save(self) -> None:
        write_private(self.state_path, json.dumps({"seen": self.seen, "all_containers": self.all_containers,
                                                   "sequencer": self.sequencer}).encode())
