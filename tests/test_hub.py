"""Units of the subscriber hub: bounded buffers and resync."""

from __future__ import annotations

import asyncio

from taskstream.web.hub import RESYNC, Announcement, Hub, Subscription


def announcement(seq: int, task_id: str = "t") -> Announcement:
    return Announcement(seq, seq, task_id, "PROGRESS", "", "{}")


async def test_a_full_buffer_turns_into_one_resync_and_stays_bounded():
    sub = Subscription("t", limit=3)
    for seq in range(1, 4):
        assert sub.push(announcement(seq))
    assert not sub.push(announcement(4))
    assert len(sub._items) == 0
    assert await sub.next(0.1) is RESYNC
    assert await sub.next(0.05) is None


async def test_next_wakes_on_push():
    sub = Subscription("t", limit=3)
    waiter = asyncio.create_task(sub.next(5))
    await asyncio.sleep(0.01)
    sub.push(announcement(1))
    assert (await waiter).seq == 1


def test_dispatch_reaches_the_task_and_the_global_subscribers_only():
    hub = Hub(client=None, channel="c", buffer=10)
    mine = hub.subscribe("a")
    other = hub.subscribe("b")
    everything = hub.subscribe(None)
    hub._dispatch('7 2 "a" "STARTED" ""\n{"id":"a"}')
    assert [i.seq for i in mine._items] == [2]
    assert list(other._items) == []
    assert [i.global_seq for i in everything._items] == [7]
    hub.unsubscribe(mine)
    hub.unsubscribe(other)
    hub.unsubscribe(everything)
    assert hub.streams == 0
    assert hub._by_task == {}
