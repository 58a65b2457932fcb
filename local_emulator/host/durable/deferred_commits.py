"""Episodes whose commit waits a moment for their activities' outcomes, so that both go in one
state-row write.

Why: an episode that only schedules activities this host runs itself would otherwise be
committed on its own, and its activities' outcomes, arriving a few milliseconds later, in a
second write; table writes are the host's and Azurite's dearest work per orchestration. The
episode's work items are sent before it is held, as before any commit; what waits is only the
write that records it, and with it the acknowledgement of the messages it applied (the start
message, a work item whose outcomes it recorded): a host that dies meanwhile gets them again
and replays, as when it dies between sending and committing. Held at most `window` seconds
from its first episode, then committed alone; anyone who meets the instance meanwhile commits
the held episodes with its own."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Held:
    events: list[dict]  # the uncommitted episodes' new history
    reset: bool  # the commit starts the history afresh
    committed: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class DeferredCommits:
    def __init__(self, window: float, flush: Callable[[str, Held], None]):
        self.window = window
        self._flush = flush  # starts committing what is still held for an instance
        self._held: dict[str, Held] = {}

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._held

    def hold(self, instance_id: str, events: list[dict], reset: bool, earlier: Held | None) -> None:
        """Keep the episodes uncommitted: `events` is all of their new history, that of the
        `earlier` held ones (taken by `take`) included."""
        if earlier is not None:  # its timer still runs, and its waiters now wait for these too
            earlier.events, earlier.reset = events, reset
            self._held[instance_id] = earlier
            return
        held = self._held[instance_id] = Held(events, reset)
        asyncio.get_running_loop().call_later(self.window, self._due, instance_id, held)

    def _due(self, instance_id: str, held: Held) -> None:
        if self._held.get(instance_id) is held:
            self._flush(instance_id, held)

    def all_held(self) -> list[tuple[str, Held]]:
        return list(self._held.items())

    def take(self, instance_id: str) -> Held | None:
        """What is held for the instance, to go with the next commit (settle it after)."""
        return self._held.pop(instance_id, None)

    def waiter(self, instance_id: str) -> asyncio.Future | None:
        """Done once the held episodes are committed (failed if they never will be)."""
        held = self._held.get(instance_id)
        return held.committed if held is not None else None

    def drop(self, instance_id: str) -> None:
        """The instance's in-memory state is being discarded: what it held is lost."""
        settle(self._held.pop(instance_id, None), RuntimeError("uncommitted episodes dropped; "
                                                               "their messages will be delivered again"))


def settle(held: Held | None, failure: BaseException | None = None) -> None:
    if held is None or held.committed.done():
        return
    if failure is None:
        held.committed.set_result(None)
    else:
        held.committed.set_exception(failure)
        held.committed.exception()  # retrieved: a waiter may have gone
