"""Episodes held uncommitted for a moment (local_emulator/host/durable/deferred_commits.py):
committed no later than the window after the first of them, never twice, together with those
held after it; their waiters learn of the commit, or of its loss; and a control message the
host ran itself counts as redelivered whenever it is received at all (store.is_redelivery)."""
import asyncio
from types import SimpleNamespace

import pytest

from local_emulator.host.durable.deferred_commits import DeferredCommits, settle
from local_emulator.host.durable.store import MessageShare, is_redelivery

WINDOW = 0.05


def _commits():
    flushed = []
    commits = DeferredCommits(WINDOW, lambda instance_id, held: flushed.append((instance_id, list(held.events))))
    return commits, flushed


def test_held_episodes_are_committed_once_the_window_ends_not_before():
    async def scenario():
        commits, flushed = _commits()
        commits.hold("i", [{"e": 1}], reset=True, earlier=None)
        assert "i" in commits and flushed == []
        await asyncio.sleep(WINDOW / 3)
        assert flushed == []
        await asyncio.sleep(WINDOW)
        assert flushed == [("i", [{"e": 1}])]
    asyncio.run(scenario())


def test_episodes_held_after_the_first_go_with_it_at_the_first_ones_time():
    async def scenario():
        commits, flushed = _commits()
        commits.hold("i", [{"e": 1}], reset=True, earlier=None)
        waiter = commits.waiter("i")
        await asyncio.sleep(WINDOW * 0.6)
        earlier = commits.take("i")
        commits.hold("i", earlier.events + [{"e": 2}], reset=False, earlier=earlier)
        assert commits.waiter("i") is waiter  # who waited for the first waits for both
        await asyncio.sleep(WINDOW * 0.6)  # past the first one's window, not the second's
        assert flushed == [("i", [{"e": 1}, {"e": 2}])]
        assert commits.take("i").reset is False  # as the last holder said: it carried the first's
    asyncio.run(scenario())


def test_episodes_taken_by_a_commit_are_not_committed_again_and_waiters_learn_it():
    async def scenario():
        commits, flushed = _commits()
        commits.hold("i", [{"e": 1}], reset=False, earlier=None)
        waiter = commits.waiter("i")
        held = commits.take("i")
        assert commits.waiter("i") is None and "i" not in commits
        settle(held)  # the taker committed them
        await asyncio.wait_for(waiter, 1)
        await asyncio.sleep(WINDOW * 2)
        assert flushed == []
    asyncio.run(scenario())


def test_every_instance_holding_episodes_is_listed_for_a_stop_to_commit():
    async def scenario():
        commits, _ = _commits()
        commits.hold("a", [{"e": 1}], reset=False, earlier=None)
        commits.hold("b", [{"e": 2}], reset=True, earlier=None)
        assert [(instance_id, held.events) for instance_id, held in commits.all_held()] == [
            ("a", [{"e": 1}]), ("b", [{"e": 2}])]
        commits.take("a")
        assert [instance_id for instance_id, _ in commits.all_held()] == ["b"]
    asyncio.run(scenario())


def test_dropped_episodes_fail_their_waiters_and_are_never_committed():
    async def scenario():
        commits, flushed = _commits()
        commits.hold("i", [{"e": 1}], reset=False, earlier=None)
        waiter = commits.waiter("i")
        commits.drop("i")
        with pytest.raises(RuntimeError, match="delivered again"):
            await waiter
        await asyncio.sleep(WINDOW * 2)
        assert flushed == [] and "i" not in commits
        commits.drop("unknown")  # nothing held: nothing to do
    asyncio.run(scenario())


def test_a_message_its_sender_ran_is_a_redelivery_whenever_it_is_received():
    plain = SimpleNamespace(dequeue_count=1)
    assert not is_redelivery(plain)
    assert is_redelivery(SimpleNamespace(dequeue_count=2))
    assert not is_redelivery(SimpleNamespace(dequeue_count=0, sent_leased=True))  # run by its sender
    received_after_sender_died = SimpleNamespace(dequeue_count=1, sent_leased=True)
    assert is_redelivery(received_after_sender_died)
    assert is_redelivery(MessageShare(received_after_sender_died, [2]))
    assert not is_redelivery(MessageShare(plain, [2]))
