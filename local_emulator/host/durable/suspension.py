"""Suspend and resume as the Durable Task Framework's executor applies them: ExecutionSuspended
(sent by the client's `suspend`) makes the instance Suspended; every event that arrives while
it is suspended is held (stored in the instance's buffer rows, so a host restart keeps it) and
no orchestrator code runs; ExecutionResumed releases the held events, oldest first, into one
episode. A terminate is not held: it ends a suspended instance at once (the engine handles it
before this). ExecutionStarted is never held: an instance suspended while Pending still runs
its first episode, as DTF runs the events that precede the suspension."""
from __future__ import annotations

from local_emulator.host.durable import history as h
from local_emulator.host.durable.store import Instance


def apply_suspension(instance: Instance, events: list[dict], new_history: list[dict]) -> list[dict]:
    """The events the orchestrator may see now, in order. The suspend and resume markers go to
    the history (a repeated one, such as suspending a suspended instance, is dropped); events
    held now go to `instance.new_buffered` (stored with the commit); a resume releases every
    held event and asks the commit to delete their rows."""
    state = instance.state
    runnable: list[dict] = []
    for event in events:
        kind = event["EventType"]
        suspended = state["RuntimeStatus"] == "Suspended"
        if kind in h.SUSPENSION_MARKERS:
            if suspended == (kind == h.EXECUTION_SUSPENDED):
                continue
            state["RuntimeStatus"] = "Suspended" if kind == h.EXECUTION_SUSPENDED else "Running"
            state["LastUpdatedTime"] = h.iso(h.utc_now())
            instance.history.append(event)
            new_history.append(event)
            if kind == h.EXECUTION_RESUMED:
                runnable += instance.buffered + instance.new_buffered
                instance.new_buffered, instance.release_buffer = [], True
        elif suspended and kind != h.EXECUTION_STARTED:
            instance.new_buffered.append(event)
        else:
            runnable.append(event)
    return runnable
