"""Units of the subscriber hub, against a real Redis: bounded buffers, resync, and which
channels one process is subscribed to (exactly those of the streams it serves)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from taskstream.keys import Keys
from taskstream.record import Change, Recorder, new_task_fields, utcnow
from taskstream.web.hub import CLOSE, RESYNC, Announcement, Handed, Hub, Subscription
from tests.harness import new_prefix


def announcement(seq: int, task_id: str = "t") -> Announcement:
    return Announcement(seq, seq, task_id, "PROGRESS", "", "{}")


async def test_a_full_buffer_turns_into_one_resync_and_stays_bounded():
    sub = Subscription("t", limit=3)
    for seq in range(1, 4):
        assert sub.push(announcement(seq)) is Handed.QUEUED
    assert sub.push(announcement(4)) is Handed.OVERFLOWED
    assert not sub._items
    assert await sub.next(0.1) is RESYNC
    assert await sub.next(0.05) is None


async def test_quiet_time_is_counted_from_the_last_change_not_the_first_wait():
    # One timer per stream, re-armed when it fires: a wait that began after a change must
    # still last its whole time before it ends quietly (the stream's keepalive).
    loop = asyncio.get_running_loop()
    sub = Subscription("t", limit=3)
    first = asyncio.create_task(sub.next(1.0))
    await asyncio.sleep(0.1)
    sub.push(announcement(1))
    assert (await first).seq == 1
    # The timer armed by the first wait fires 1.0 s after it began; this wait began later.
    began = loop.time()
    assert await sub.next(1.0) is None
    assert loop.time() - began >= 0.99
    sub.close()
    assert sub._timer is None


async def test_next_wakes_on_push():
    sub = Subscription("t", limit=3)
    waiter = asyncio.create_task(sub.next(5))
    await asyncio.sleep(0.01)
    sub.push(announcement(1))
    assert (await waiter).seq == 1


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[Hub]:
    client = aioredis.Redis.from_url(redis_url)
    hub = Hub(client, Keys(new_prefix()), buffer=100, linger_seconds=0.05)
    await hub.start()
    assert await hub.wait_live(5)
    yield hub
    await hub.stop()
    await client.aclose()


@pytest.fixture
def sync_redis(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def subscribers(client: redis.Redis, channel: str) -> int:
    return dict(client.pubsub_numsub(channel))[channel]


def record_change(client: redis.Redis, keys: Keys, task_id: str) -> None:
    """Record a change of `task_id` as a worker does: stored, then announced on its channels."""
    recorder = Recorder(client, keys, ttl=60, retain=1000, global_retain=1000)
    fields = new_task_fields(task_id, "sleep", utcnow())
    recorder.record(Change(task_id, fields, create=True, score=time.time()))


async def until(condition, wait: float = 5.0) -> None:
    deadline = time.monotonic() + wait
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_subscribe_returns_only_once_redis_has_confirmed_the_channel(hub, sync_redis):
    keys = hub._keys
    sub = await hub.subscribe("a")
    # No waiting here: the subscription is in place when subscribe() returns.
    assert subscribers(sync_redis, keys.task_channel("a")) == 1
    record_change(sync_redis, keys, "a")
    item = await sub.next(5)
    assert isinstance(item, Announcement)
    assert (item.task_id, item.seq, item.state) == ("a", 1, "PENDING")


async def test_a_process_hears_only_the_tasks_it_streams(hub, sync_redis):
    keys = hub._keys
    mine = await hub.subscribe("a")
    for n in range(20):
        record_change(sync_redis, keys, f"other-{n}")
    record_change(sync_redis, keys, "a")
    item = await mine.next(5)
    assert isinstance(item, Announcement) and item.task_id == "a"
    # Not one message of the other tasks (nor of the common channel) reached this process.
    assert hub.received == 1
    assert subscribers(sync_redis, keys.channel) == 0


async def test_the_common_channel_is_heard_only_while_a_global_stream_is_open(hub, sync_redis):
    keys = hub._keys
    everything = await hub.subscribe(None)
    assert subscribers(sync_redis, keys.channel) == 1
    record_change(sync_redis, keys, "x")
    item = await everything.next(5)
    assert isinstance(item, Announcement) and item.global_seq >= 1
    hub.unsubscribe(everything)
    assert hub.streams == 0 and hub.global_streams == 0
    await until(lambda: subscribers(sync_redis, keys.channel) == 0)
    assert hub.channels == 0


async def test_a_channel_lingers_briefly_then_is_unsubscribed(hub, sync_redis):
    channel = hub._keys.task_channel("a")
    first = await hub.subscribe("a")
    second = await hub.subscribe("a")
    hub.unsubscribe(first)
    await asyncio.sleep(0.1)
    assert subscribers(sync_redis, channel) == 1  # one stream still open
    hub.unsubscribe(second)
    again = await hub.subscribe("a")  # back within the linger: nothing was unsubscribed
    await asyncio.sleep(0.1)
    assert subscribers(sync_redis, channel) == 1
    hub.unsubscribe(again)
    await until(lambda: subscribers(sync_redis, channel) == 0)
    assert hub._channels == {} and hub._pending == {}


async def test_subscribing_again_right_after_an_unsubscribe_waits_for_its_own_confirmation(
    hub, sync_redis
):
    # SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE in flight at once: the first confirmation must not be
    # taken for the last one, or the stream would read the record while unsubscribed.
    keys = hub._keys
    for n in range(20):
        task_id = f"churn-{n}"
        sub = await hub.subscribe(task_id)
        hub.unsubscribe(sub)
        hub._drop_if_unused(sub_channel := hub._channels[keys.task_channel(task_id).encode()])
        assert sub_channel.name not in hub._channels
        again = await hub.subscribe(task_id)
        assert subscribers(sync_redis, keys.task_channel(task_id)) == 1
        record_change(sync_redis, keys, task_id)
        item = await again.next(5)
        assert isinstance(item, Announcement) and item.task_id == task_id
        hub.unsubscribe(again)


async def test_a_lost_connection_resubscribes_and_tells_every_stream_to_resync(hub, sync_redis):
    keys = hub._keys
    sub = await hub.subscribe("a")
    everything = await hub.subscribe(None)
    # This hub's connection only: the tests share the server with other tests' subscribers.
    assert hub._writer is not None
    host, port = hub._writer.get_extra_info("sockname")[:2]
    assert sync_redis.client_kill_filter(_type="pubsub", addr=f"{host}:{port}") == 1
    # Every stream is told to re-read what it may have missed, once subscribed again.
    assert await sub.next(10) is RESYNC
    assert await everything.next(10) is RESYNC
    # Its PING's answer, after the confirmations, makes the hub live again.
    assert await hub.wait_live(10) and hub.reconnects >= 1
    assert subscribers(sync_redis, keys.task_channel("a")) == 1
    record_change(sync_redis, keys, "a")
    item = await sub.next(5)
    assert isinstance(item, Announcement) and item.task_id == "a"


async def test_a_stream_opened_while_redis_is_unreachable_is_refused(redis_url):
    # Nothing listens on this port: the hub is never live, and a stream cannot start blind.
    client = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    hub = Hub(client, Keys(f"t{uuid.uuid4().hex[:6]}"), buffer=10, subscribe_timeout_seconds=0.3)
    await hub.start()
    try:
        with pytest.raises(redis.ConnectionError):
            await hub.subscribe("a")
        assert hub.streams == 0 and not hub.live
    finally:
        await hub.stop()
        await client.aclose()


def record_progress(client: redis.Redis, keys: Keys, task_id: str, steps: int) -> None:
    recorder = Recorder(client, keys, ttl=60, retain=1000, global_retain=1000)
    recorder.record(
        Change(task_id, new_task_fields(task_id, "sleep", utcnow()), create=True, score=time.time())
    )
    for step in range(1, steps + 1):
        recorder.record(Change(task_id, {"state": "PROGRESS", "progress": {"current": step}}))


async def test_a_change_for_thousands_of_streams_does_not_hold_back_another_tasks(hub, sync_redis):
    keys = hub._keys
    crowd = [await hub.subscribe("crowd") for _ in range(2_000)]
    alone = await hub.subscribe("alone")
    # Three changes of the crowd's task, then one of another task, all on the socket at once.
    record_progress(sync_redis, keys, "crowd", 2)
    record_change(sync_redis, keys, "alone")
    item = await alone.next(5)
    assert isinstance(item, Announcement) and item.task_id == "alone"
    # Its stream was woken while the crowd was still being handed the earlier changes...
    assert sum(len(sub._items or ()) for sub in crowd) < 3 * len(crowd)
    # ...and every one of the crowd still gets all three, in order.
    await until(lambda: all(len(sub._items or ()) == 3 for sub in crowd))
    for sub in crowd:
        assert [(await sub.next(1)).seq for _ in range(3)] == [1, 2, 3]


async def test_a_hub_stopped_while_it_connects_stops(redis_url: str):
    # Whenever the stop lands (before, during or after the connection is made), it ends the hub.
    for step in range(40):
        client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_keepalive=True)
        hub = Hub(client, Keys(new_prefix()), buffer=10)
        try:
            await hub.start()
            await asyncio.sleep(step * 0.0005)
            began = time.monotonic()
            await asyncio.wait_for(hub.stop(), 5)
            # At once: a stop the hub did not hear would hang until something cancelled it again.
            assert time.monotonic() - began < 1, f"stopped {step * 0.5} ms after the start"
        finally:
            await client.aclose()


class Sink:
    """Stands in for a stream's connection (its transport): keeps what it is given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


async def test_waiting_streams_are_written_directly_and_ended_once_all_have_it(hub, sync_redis):
    subs = [await hub.subscribe("crowd") for _ in range(500)]
    sinks = [Sink() for _ in subs]
    for sub, sink in zip(subs, sinks, strict=True):
        sub.write_directly(sink, "")  # type: ignore[arg-type]
    waits = [asyncio.create_task(sub.next(30)) for sub in subs]
    await asyncio.sleep(0)
    # Created (seq 1), two progress changes, then the end.
    record_progress(sync_redis, hub._keys, "crowd", 2)
    recorder = Recorder(sync_redis, hub._keys, ttl=60, retain=1000, global_retain=1000)
    recorder.record(Change("crowd", {"state": "SUCCESS", "result": 1}))
    done, _ = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    # No stream's task was woken before every stream had every change, the end included...
    assert done and all(len(sink.chunks) == 4 for sink in sinks)
    # ...each as an HTTP/1.1 chunk of the SSE event, in order; then every stream ends.
    for sink in sinks:
        ids = [chunk.split(b"\r\n", 1)[1].split(b"\n", 1)[0] for chunk in sink.chunks]
        assert ids == [b"id: 1", b"id: 2", b"id: 3", b"id: 4"]
    assert all(item is CLOSE for item in await asyncio.gather(*waits))
    assert [sub.sent for sub in subs] == [4] * len(subs)
    assert hub.written == hub.delivered == 4 * len(subs)
