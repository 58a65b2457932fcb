"""local_emulator.delivery on its own: a try that raises is retried, not lost until a restart."""
from __future__ import annotations

from local_emulator.delivery import DONE, DeliveryQueue, RetryPolicy
from tests.conftest import wait_until


def test_an_attempt_that_raises_is_retried(tmp_path):
    tries, exhausted = [], []

    def attempt(job: dict) -> str:
        tries.append(job["attempts"])
        if len(tries) == 1:
            raise KeyError("a bug or an outage in the owner")
        return DONE

    queue = DeliveryQueue(tmp_path / "jobs", attempt, exhausted.append,
                          RetryPolicy(initial_seconds=0.02, maximum_seconds=0.05, attempts=3))
    queue.start()
    try:
        queue.add({"payload": 1})
        wait_until(lambda: queue.pending() == 0)
    finally:
        queue.stop()
    assert tries == [0, 1] and exhausted == []
