"""An entity's persisted record in the task hub's Instances table (the same table and Azurite
as the orchestrations): PartitionKey = the entity's instance id `@<name>@<key>`, RowKey
`entity`, so instance queries (RowKey `state`) never list entities, as Azure's v2 queries
leave them out. One row holds everything a batch changes, written in one ETag-guarded
update, which is what makes a batch exactly-once:

- `EntityExists`, `EntityState` (the serialized state the SDK returned);
- `Processed`: keys of the request messages already applied (kept for a window longer than
  any redelivery), so a message delivered again after a crash is not applied twice;
- `Outbox`: the responses and signals the last batch produced, sent after the commit and
  sent again by whoever finds them unsent (receivers drop duplicates by key)."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError

from local_emulator.host.durable import history as h
from local_emulator.host.durable.large_payloads import BLOB_SUFFIX
from local_emulator.host.durable.store import TaskHubStore

ENTITY_ROW = "entity"


def entity_instance_id(name: str, key: str) -> str:
    """The Durable Task framework's scheduler id: `@` + lowercased name + `@` + key."""
    return f"@{name.lower()}@{key}"


def split_instance_id(instance_id: str) -> tuple[str, str]:
    """(name, key) of `@name@key`; the key may itself hold `@` (only the second one splits)."""
    if not instance_id.startswith("@") or "@" not in instance_id[1:]:
        raise ValueError(f"{instance_id!r} is not an entity instance id")
    name, key = instance_id[1:].split("@", 1)
    return name, key


@dataclass
class EntityRecord:
    instance_id: str
    exists: bool = False
    state: str | None = None  # the SDK's serialized state (JSON text)
    processed: dict[str, str] = field(default_factory=dict)  # message key -> when applied
    outbox: list[dict] = field(default_factory=list)
    last_operation_time: str | None = None
    etag: str | None = None

    @property
    def name(self) -> str:
        return split_instance_id(self.instance_id)[0]

    @property
    def key(self) -> str:
        return split_instance_id(self.instance_id)[1]

    def forget_older_than(self, seconds: float, keep: int) -> None:
        """Drop dedup keys older than any redelivery should be (the queue lease, many times
        over), but never the newest `keep`: a message committed just before a long outage is
        seen again soon after the restart, among the first messages received."""
        cutoff = h.utc_now() - dt.timedelta(seconds=seconds)
        newest = sorted(self.processed.items(), key=lambda item: item[1])[-keep:] if keep else []
        kept = dict(newest)
        self.processed = {key: at for key, at in self.processed.items() if key in kept or h.parse_iso(at) >= cutoff}


class EntityStore:
    def __init__(self, store: TaskHubStore):
        self.store = store
        self.table = store.instances

    async def load(self, instance_id: str) -> EntityRecord:
        """The entity's record; a fresh, non-existing one if it was never written."""
        try:
            row = await self.table.get_entity(instance_id, ENTITY_ROW)
        except ResourceNotFoundError:
            return EntityRecord(instance_id)
        return _unpack(instance_id, await self._inflate(row), row.metadata["etag"])

    async def save(self, record: EntityRecord) -> None:
        """Create or replace the row; raises ResourceExistsError / ResourceModifiedError when
        someone else wrote it since it was loaded."""
        entity = await self.store.large.offload(_pack(record))
        if record.etag is None:
            metadata = await self.table.create_entity(entity)
        else:
            metadata = await self.table.update_entity(entity, mode="replace", etag=record.etag,
                                                      match_condition=MatchConditions.IfNotModified)
        record.etag = metadata["etag"]

    async def list(self, name: str) -> list[EntityRecord]:
        """Every stored entity of one (lowercased) name, in key order."""
        prefix = entity_instance_id(name, "")
        rows = self.table.query_entities(
            "RowKey eq @rk and PartitionKey ge @low and PartitionKey lt @high",
            parameters={"rk": ENTITY_ROW, "low": prefix, "high": prefix + "\uffff"})
        return [_unpack(row["PartitionKey"], await self._inflate(row), row.metadata["etag"]) async for row in rows]

    async def _inflate(self, row) -> dict:
        if not any(key.endswith(BLOB_SUFFIX) for key in row):
            return row
        return await self.store.large.inflate(row)


def _pack(record: EntityRecord) -> dict:
    return {"PartitionKey": record.instance_id, "RowKey": ENTITY_ROW, "EntityExists": record.exists,
            "EntityState": json.dumps(record.state), "Processed": json.dumps(record.processed),
            "Outbox": json.dumps(record.outbox), "LastOperationTime": record.last_operation_time or ""}


def _unpack(instance_id: str, row: dict, etag: str) -> EntityRecord:
    return EntityRecord(instance_id, exists=bool(row.get("EntityExists")),
                        state=json.loads(row.get("EntityState") or "null"),
                        processed=json.loads(row.get("Processed") or "{}"),
                        outbox=json.loads(row.get("Outbox") or "[]"),
                        last_operation_time=row.get("LastOperationTime") or None, etag=etag)
