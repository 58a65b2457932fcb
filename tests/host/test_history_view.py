"""The status API's history shape (history_view.py) on events of every kind the host records,
without a host: what the extension folds, renames, parses and leaves out."""
import json

from local_emulator.host.durable import history as h
from local_emulator.host.durable.history_view import public_history


def recorded() -> list[dict]:
    """A history as the engine stores it, host bookkeeping included."""
    return [
        h.event(h.ORCHESTRATOR_STARTED),
        h.event(h.EXECUTION_STARTED, Name="parent", Input='{"x": 1}', Version="1.0",
                OrchestrationInstance={"InstanceId": "i", "ExecutionId": "e"}, MessageKey="k0"),
        h.event(h.SUB_CREATED, 0, Name="child", Input='{"x": 1}', InstanceId="i:0000", RetryOptions=None,
                Action={"actionType": 2}, Attempt=1),
        h.event(h.TASK_SCHEDULED, 1, Name="flaky", Input='"in"', RetryOptions={"maxNumberOfAttempts": 2},
                Action={"actionType": 1}, Attempt=1),
        h.event(h.TIMER_CREATED, 2, FireAt="2026-01-01T00:00:00.000000Z", RetryFor={"EventType": 4, "EventId": 1}),
        h.event(h.ORCHESTRATOR_COMPLETED),
        h.event(h.SUB_COMPLETED, TaskScheduledId=0, Result='{"y": 2}', MessageKey="k1"),
        h.event(h.TASK_FAILED, TaskScheduledId=1, Reason="Activity function 'flaky' failed: boom",
                Details='{"Message": "boom"}', FailureDetails={"ErrorType": "RuntimeError", "ErrorMessage": "boom"}),
        h.event(h.TIMER_FIRED, TimerId=2, FireAt="2026-01-01T00:00:00.000000Z"),
        h.event(h.EVENT_RAISED, Name="approve", Input="true"),
        h.event(h.EXECUTION_SUSPENDED, Reason="pause"),
        h.event(h.EXECUTION_RESUMED, Reason="go on"),
        h.event(h.EXECUTION_TERMINATED, Input='"enough"'),
        h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Terminated", Result='"enough"'),
    ]


def test_completions_absorb_what_scheduled_them_and_bookkeeping_is_left_out():
    events = recorded()
    shown = public_history(events)
    assert [e["EventType"] for e in shown] == [
        "ExecutionStarted", "TimerCreated", "SubOrchestrationInstanceCompleted", "TaskFailed", "TimerFired",
        "EventRaised", "ExecutionSuspended", "ExecutionResumed", "ExecutionTerminated", "ExecutionCompleted"]
    started, timer, child, failed, fired, raised, suspended, resumed, terminated, completed = shown
    assert started == {"EventType": "ExecutionStarted", "Timestamp": started["Timestamp"],
                       "FunctionName": "parent", "Input": '{"x": 1}'}
    assert set(timer) == {"EventType", "Timestamp", "FireAt"}
    assert (child["FunctionName"], child["Input"], "Result" in child) == ("child", '{"x": 1}', False)
    assert (child["ScheduledTime"], failed["ScheduledTime"]) == (events[2]["Timestamp"], events[3]["Timestamp"])
    assert (failed["FunctionName"], failed["Reason"], failed["FailureDetails"]["ErrorType"]) == (
        "flaky", "Activity function 'flaky' failed: boom", "RuntimeError")
    assert set(fired) == {"EventType", "Timestamp", "FireAt"}
    assert (raised["Name"], raised["Input"]) == ("approve", "true")
    assert (suspended["Reason"], resumed["Reason"]) == ("pause", "go on")
    assert terminated["Input"] == '"enough"' and "Result" not in completed
    hidden = {"EventId", "IsPlayed", "MessageKey", "Action", "RetryOptions", "Attempt", "RetryFor", "Version",
              "OrchestrationInstance", "TaskScheduledId", "TimerId", "Name"}
    assert all(not hidden & set(e) for e in shown if e["EventType"] != "EventRaised")


def test_results_are_shown_parsed_only_when_asked_and_inputs_can_be_hidden():
    shown = public_history(recorded(), show_input=False, show_output=True)
    child = next(e for e in shown if e["EventType"] == "SubOrchestrationInstanceCompleted")
    completed = shown[-1]
    assert child["Result"] == {"y": 2} and completed["Result"] == "enough"
    assert not any("Input" in e for e in shown)
    not_json = public_history([h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result="plain text")],
                              show_output=True)
    assert not_json[0]["Result"] == "plain text"  # as the extension: the text itself when it is not JSON
    assert json.dumps(shown)  # every value serializable
