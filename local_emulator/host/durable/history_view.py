"""An instance's history as the extension's status API shows it (`showHistory=true`), so a
client written against Azure reads the same JSON here:
- `EventType` by name; `EventId`, `IsPlayed` and the orchestrator episode markers left out;
- a finished task's TaskScheduled (or SubOrchestrationInstanceCreated) folded into its
  completion, which gains `FunctionName`, `ScheduledTime` and, with the input shown, `Input`;
  a task still running keeps its TaskScheduled;
- ExecutionStarted names its orchestrator as `FunctionName`;
- `Result` only with `showHistoryOutput=true`, then parsed as JSON (TaskCompleted,
  SubOrchestrationInstanceCompleted, ExecutionCompleted), as the extension parses it;
- `Input` only with `showInput` (the default);
- none of the host's own bookkeeping (message keys, retry state, the SDK's actions)."""
from __future__ import annotations

import json

from local_emulator.host.durable import history as h

EVENT_NAMES = {h.EXECUTION_STARTED: "ExecutionStarted", h.EXECUTION_COMPLETED: "ExecutionCompleted",
               h.EXECUTION_TERMINATED: "ExecutionTerminated", h.TASK_SCHEDULED: "TaskScheduled",
               h.TASK_COMPLETED: "TaskCompleted", h.TASK_FAILED: "TaskFailed",
               h.SUB_CREATED: "SubOrchestrationInstanceCreated", h.SUB_COMPLETED: "SubOrchestrationInstanceCompleted",
               h.SUB_FAILED: "SubOrchestrationInstanceFailed", h.TIMER_CREATED: "TimerCreated",
               h.TIMER_FIRED: "TimerFired", h.EVENT_SENT: "EventSent", h.EVENT_RAISED: "EventRaised",
               h.EXECUTION_SUSPENDED: "ExecutionSuspended", h.EXECUTION_RESUMED: "ExecutionResumed"}

# the Durable Task Framework's fields of each event the status API shows (besides EventType, Timestamp)
SHOWN_FIELDS = {h.EXECUTION_STARTED: ("Name", "Input"),
                h.EXECUTION_COMPLETED: ("OrchestrationStatus", "Result", "FailureDetails"),
                h.EXECUTION_TERMINATED: ("Input",),
                h.TASK_SCHEDULED: ("Name", "Input"),
                h.TASK_COMPLETED: ("Result",),
                h.TASK_FAILED: ("Reason", "Details", "FailureDetails"),
                h.SUB_CREATED: ("Name", "Input", "InstanceId"),
                h.SUB_COMPLETED: ("Result",),
                h.SUB_FAILED: ("Reason", "Details", "FailureDetails"),
                h.TIMER_CREATED: ("FireAt",),
                h.TIMER_FIRED: ("FireAt",),
                h.EVENT_SENT: ("Name", "Input", "InstanceId"),
                h.EVENT_RAISED: ("Name", "Input"),
                h.EXECUTION_SUSPENDED: ("Reason",),
                h.EXECUTION_RESUMED: ("Reason",)}
SCHEDULED_BY = {h.TASK_COMPLETED: h.TASK_SCHEDULED, h.TASK_FAILED: h.TASK_SCHEDULED,
                h.SUB_COMPLETED: h.SUB_CREATED, h.SUB_FAILED: h.SUB_CREATED}
PARSED_RESULTS = (h.TASK_COMPLETED, h.SUB_COMPLETED, h.EXECUTION_COMPLETED)


def parse_json_or_text(value):
    """The extension's ParseToJToken: JSON when it parses, else the text itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def public_history(events: list[dict], show_input: bool = True, show_output: bool = False) -> list[dict]:
    scheduled = {(e["EventType"], e["EventId"]): e for e in events
                 if e["EventType"] in (h.TASK_SCHEDULED, h.SUB_CREATED)}
    folded = set()
    shown: list[tuple[dict, dict]] = []  # (event, what the API shows of it)
    for event in events:
        kind = event["EventType"]
        if kind not in EVENT_NAMES:
            continue
        item = {"EventType": EVENT_NAMES[kind], "Timestamp": event.get("Timestamp")}
        item.update((key, event[key]) for key in SHOWN_FIELDS[kind] if event.get(key) is not None)
        if kind == h.EXECUTION_STARTED:
            item["FunctionName"] = item.pop("Name", None)
        if kind in SCHEDULED_BY:
            origin = scheduled.get((SCHEDULED_BY[kind], event.get("TaskScheduledId")))
            if origin is not None:
                folded.add(id(origin))
                item.update(ScheduledTime=origin.get("Timestamp"), FunctionName=origin.get("Name"))
                if show_input and origin.get("Input") is not None:
                    item["Input"] = origin["Input"]
        if "Result" in item:
            if not show_output:
                del item["Result"]
            elif kind in PARSED_RESULTS:
                item["Result"] = parse_json_or_text(item["Result"])
        if not show_input:
            item.pop("Input", None)
        shown.append((event, item))
    return [item for event, item in shown if id(event) not in folded]
