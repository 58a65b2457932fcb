"""Rewind of a Failed orchestration, as the Durable extension does it (HttpApiHandler: 404
unknown, 410 Completed / Terminated, the client's InvalidOperationException (HTTP 500) for an
instance that is not Failed, else 202; DurableTask.AzureStorage then rewrites the history).

The request is one control message (atomic: answered 202 only once it is queued). The engine
applies it under the instance's lock: every failed task whose failure ended it (an activity or
sub-orchestration without retries left) loses its failure from the history, the execution's
ExecutionCompleted goes too, the failed activities are sent again under their original task
ids, a failed sub-orchestration is rewound in turn, and the orchestrator replays once, so the
status is Running again. Successful tasks keep their results: they never run again.

Outcomes that reach an instance after it failed (a fan-out's slow activities, a timer) are not
dropped: a Failed instance holds them in its buffer rows, as a suspended one holds its events
(engine._hold_for_rewind), committed before the activity's work item is deleted. A redelivered
work item finds its outcome there (the activity worker's recorded check reads the history and
the held events), and the rewind passes the held outcomes to its replay as new events, deleting
their rows in its commit. Nothing is asked again: a task with no outcome at the rewind still has
its work item or timer message queued (deleted only once its outcome is committed), and that
outcome reaches the instance once it runs again.

A redelivered rewind (the host died after its sends, before its commit) repeats the same work
under the same keys, with the held outcomes still stored; the activity worker, looking for a
recorded outcome first, runs a rewound activity once its failure has left the history. A rewind
of an instance that is no longer Failed (it was applied already) does nothing."""
from __future__ import annotations

from dataclasses import dataclass, field

from local_emulator.host.durable import history as h

REWIND_REQUESTED = 21   # ExecutionRewound in DTF's numbering; a message only, never history
_AWAITS = (h.TASK_SCHEDULED, h.SUB_CREATED, h.TIMER_CREATED)   # events a completion answers


def request(instance_id: str, execution_id: str | None, reason: str, key: str) -> dict:
    """The control message that asks the engine to rewind this execution."""
    return {"InstanceId": instance_id, "Key": key, "Event": h.event(REWIND_REQUESTED, Reason=reason),
            **({"ExecutionId": execution_id} if execution_id else {})}


@dataclass
class Plan:
    history: list[dict]
    activities: list[dict] = field(default_factory=list)     # TaskScheduled events to run again
    children: list[str] = field(default_factory=list)        # failed sub-orchestrations to rewind
    answers: list[dict] = field(default_factory=list)        # held outcomes the replay gets
    next_id: int = 0


def _final(scheduled: dict | None) -> bool:
    """A failure the orchestrator saw: no retry options, or no attempt left."""
    if scheduled is None:
        return False
    options = scheduled.get("RetryOptions")
    return not options or scheduled.get("Attempt", 1) >= options.get("maxNumberOfAttempts", 1)


def plan(history: list[dict], held: list[dict] = ()) -> Plan:
    """The rewound history and the work it needs; `held` are the outcomes that reached the
    instance after it failed (one per task: the first)."""
    failures = {h.TASK_FAILED: h.TASK_SCHEDULED, h.SUB_FAILED: h.SUB_CREATED}
    dropped: set[int] = set()     # positions in `history`
    result = Plan([])
    for position, event in enumerate(history):
        kind = event["EventType"]
        if kind == h.EXECUTION_COMPLETED:
            dropped.add(position)
        if kind not in failures:
            continue
        scheduled = h.find_event(history, failures[kind], event["TaskScheduledId"])
        if not _final(scheduled):
            continue
        dropped.add(position)
        if kind == h.TASK_FAILED:
            result.activities.append(scheduled)
        else:
            result.children.append(scheduled["InstanceId"])
        # the host's back-off timer after the last attempt (engine._retry_bookkeeping)
        for index, timer in enumerate(history):
            if timer["EventType"] == h.TIMER_CREATED and timer.get("RetryFor") == {
                    "EventType": failures[kind], "EventId": scheduled["EventId"]}:
                dropped.add(index)
                dropped.update(i for i, fired in enumerate(history)
                               if fired["EventType"] == h.TIMER_FIRED and fired.get("TimerId") == timer["EventId"])
    kept = [event for position, event in enumerate(history) if position not in dropped]
    while kept and kept[-1]["EventType"] == h.ORCHESTRATOR_STARTED:   # the failed episode's start
        kept.pop()
    result.history = kept
    answered = {h.completion_id(e) for e in kept if h.completion_id(e) is not None}
    rewound = {e["EventId"] for e in result.activities} | {
        e["EventId"] for e in kept if e["EventType"] == h.SUB_CREATED and e["InstanceId"] in result.children}
    awaited = {e["EventId"] for e in kept if e["EventType"] in _AWAITS} - answered - rewound
    for event in held:   # an answer to a task the rewound history still awaits, else stale
        task_id = h.completion_id(event)
        if task_id in awaited:
            result.answers.append(event)
            awaited.discard(task_id)
    result.next_id = 1 + max((e["EventId"] for e in kept if e.get("EventId", -1) >= 0), default=-1)
    return result
