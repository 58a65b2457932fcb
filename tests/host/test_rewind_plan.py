"""What a rewind does to a Failed history (local_emulator/host/durable/rewind.py `plan`): the
final failure and the ExecutionCompleted leave it, the failed activity runs again, and the
outcomes the instance held since it failed go to the replay only when they answer a task the
rewound history still waits for (one each: a duplicate, a stale or an unknown answer is not
passed on, so the orchestrator never sees a task completed twice)."""
from local_emulator.host.durable import history as h
from local_emulator.host.durable import rewind


def fan_out_failed() -> list[dict]:
    """Three activities and a timer scheduled; activity 2 failed (no retries) and ended it
    while 0 and 1 and the timer were still under way."""
    return [h.event(h.EXECUTION_STARTED, Name="fan"), h.event(h.ORCHESTRATOR_STARTED),
            *[h.event(h.TASK_SCHEDULED, task_id, Name="work") for task_id in range(3)],
            h.event(h.TIMER_CREATED, 3, FireAt=h.iso(h.utc_now())),
            h.event(h.ORCHESTRATOR_COMPLETED),
            h.event(h.ORCHESTRATOR_STARTED), h.event(h.TASK_FAILED, TaskScheduledId=2, Reason="boom"),
            h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Failed")]


def completed(task_id: int, result: str) -> dict:
    return h.event(h.TASK_COMPLETED, TaskScheduledId=task_id, Result=result)


def test_held_outcomes_of_awaited_tasks_go_to_the_replay_and_only_the_failed_activity_runs_again():
    held = [completed(1, "one"), h.event(h.TIMER_FIRED, TimerId=3), completed(0, "zero")]
    plan = rewind.plan(fan_out_failed(), held)
    assert [e["EventId"] for e in plan.activities] == [2]
    assert plan.answers == held
    kinds = [e["EventType"] for e in plan.history]
    assert h.TASK_FAILED not in kinds and h.EXECUTION_COMPLETED not in kinds
    assert kinds[-1] == h.ORCHESTRATOR_COMPLETED     # the failed episode's start went too
    assert plan.next_id == 4


def test_no_held_outcome_means_nothing_is_asked_again():
    """Tasks still under way keep their queued messages: the plan sends nothing for them."""
    plan = rewind.plan(fan_out_failed())
    assert [e["EventId"] for e in plan.activities] == [2] and plan.answers == [] and plan.children == []


def test_duplicate_stale_and_unknown_held_outcomes_are_not_passed_on():
    history = fan_out_failed()
    history.insert(-2, completed(0, "zero"))                 # answered before the failure
    held = [completed(0, "zero again"),                      # already in the history
            completed(1, "first"), completed(1, "second"),   # only the first answers
            completed(2, "late success"),                    # the rewound task gets a run of its own
            completed(9, "never scheduled")]
    plan = rewind.plan(history, held)
    assert [e["Result"] for e in plan.answers] == ["first"]
    assert [e["EventId"] for e in plan.activities] == [2]


def test_a_failed_sub_orchestration_is_rewound_and_a_held_answer_for_it_is_not_passed_on():
    history = [h.event(h.EXECUTION_STARTED, Name="parent"), h.event(h.ORCHESTRATOR_STARTED),
               h.event(h.SUB_CREATED, 0, InstanceId="child-1", Name="inner"),
               h.event(h.ORCHESTRATOR_COMPLETED), h.event(h.ORCHESTRATOR_STARTED),
               h.event(h.SUB_FAILED, TaskScheduledId=0, Reason="inner failed"),
               h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Failed")]
    plan = rewind.plan(history, [h.event(h.SUB_COMPLETED, TaskScheduledId=0, Result="stale")])
    assert plan.children == ["child-1"] and plan.answers == [] and plan.activities == []
