"""History events in the Durable Task Framework's JSON shape (what the Python SDK replays)
and the actions the SDK returns, flattened in the order it assigned task ids."""
from __future__ import annotations

import datetime as dt
import uuid

EXECUTION_STARTED, EXECUTION_COMPLETED, EXECUTION_FAILED, EXECUTION_TERMINATED = 0, 1, 2, 3
TASK_SCHEDULED, TASK_COMPLETED, TASK_FAILED = 4, 5, 6
SUB_CREATED, SUB_COMPLETED, SUB_FAILED = 7, 8, 9
TIMER_CREATED, TIMER_FIRED = 10, 11
ORCHESTRATOR_STARTED, ORCHESTRATOR_COMPLETED = 12, 13
EVENT_SENT, EVENT_RAISED, CONTINUE_AS_NEW = 14, 15, 16
EXECUTION_SUSPENDED, EXECUTION_RESUMED = 19, 20
SUSPENSION_MARKERS = (EXECUTION_SUSPENDED, EXECUTION_RESUMED)  # the host's, never shown to the SDK

CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY, CALL_SUB, CALL_SUB_WITH_RETRY = 0, 1, 2, 3
CONTINUE_AS_NEW_ACTION, CREATE_TIMER, WAIT_FOR_EVENT = 4, 5, 6
CALL_ENTITY, SIGNAL_ENTITY = 7, 9
WHEN_ANY, WHEN_ALL = 11, 12
TAKES_TASK_ID = {CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY, CALL_SUB, CALL_SUB_WITH_RETRY, CREATE_TIMER,
                 CALL_ENTITY, SIGNAL_ENTITY}

# completion event type -> field naming the task it completes
COMPLETION_KEYS = {TASK_COMPLETED: "TaskScheduledId", TASK_FAILED: "TaskScheduledId",
                   SUB_COMPLETED: "TaskScheduledId", SUB_FAILED: "TaskScheduledId",
                   TIMER_FIRED: "TimerId"}


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def event(event_type: int, event_id: int = -1, **fields) -> dict:
    return {"EventType": event_type, "EventId": event_id, "IsPlayed": False,
            "Timestamp": iso(utc_now()), **fields}


def new_key() -> str:
    return uuid.uuid4().hex


def flatten_actions(actions) -> list[dict]:
    """Schema V2: one list of every action so far; compound actions hold their children."""
    flat: list[dict] = []

    def visit(action):
        if isinstance(action, list):
            for item in action:
                visit(item)
        elif action.get("actionType") in (WHEN_ANY, WHEN_ALL):
            for child in action.get("compoundActions", []):
                visit(child)
        else:
            flat.append(action)
    visit(actions or [])
    return flat


def completion_id(history_event: dict):
    key = COMPLETION_KEYS.get(history_event["EventType"])
    return history_event.get(key) if key else None


def find_event(history: list[dict], event_type: int, event_id: int) -> dict | None:
    return next((e for e in history if e["EventType"] == event_type and e["EventId"] == event_id), None)


def retry_delay_ms(options: dict, attempt: int) -> float:
    """DTF back-off: first interval x coefficient^(attempt-1), capped by maxRetryInterval."""
    delay = options.get("firstRetryIntervalInMilliseconds", 1000) * (
        options.get("backoffCoefficient", 1) ** (attempt - 1))
    cap = options.get("maxRetryIntervalInMilliseconds")
    return min(delay, cap) if cap else delay
