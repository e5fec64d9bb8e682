"""The hub's own CPU per change, in process: from the bytes on its pub/sub socket to the encoded
SSE frame a stream is about to write (the write itself, Hypercorn's and the kernel's, excluded).

A hub (as a web process runs it, on uvloop) follows one task with one stream; a publisher process
announces changes in the record's format on that task's channel, then on other tasks' channels.
The figure is the CPU time of the hub's thread (time.thread_time) divided by the changes. The
publisher is a process of its own, as the workers are: a publishing thread in the hub's process
would take the GIL from it at every change, and the hand-overs were half of the figure.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import uvloop

from taskstream.keys import Keys
from taskstream.web.hub import Announcement, Hub
from taskstream.web.serve import tune_gc

_SNAPSHOT = (
    '{{"id":"{tid}","task":"sleep","state":"PROGRESS","seq":{seq},"progress":{{"current":{seq},'
    '"total":1000000}},"result":null,"error":null,"retries":0,'
    '"submitted_at":"2026-11-29T04:00:00.000000Z","started_at":"2026-11-29T04:00:00.100000Z",'
    '"finished_at":null,"updated_at":"2026-11-29T04:00:01.000000Z"}}'
)


def message(g: int, seq: int, task_id: str) -> str:
    return f'{g} {seq} "{task_id}" "PROGRESS" ""\n' + _SNAPSHOT.format(tid=task_id, seq=seq)


@dataclass
class HubCost:
    served_us: float  # CPU per change served (one stream), changes paced at `rate`
    served_burst_us: float  # the same, changes sent as fast as Redis takes them
    # CPU per change served to one stream the hub writes to directly (HTTP/1.1 on our own
    # Hypercorn, see service/direct.py), paced: the stream's task is not woken at all
    served_direct_us: float
    not_served_us: float  # CPU per change of a task this process streams not
    received_not_served: int  # messages the hub received of those
    changes: int
    rate: int


def _publish(
    url: str, channel: str, task_id: str, n: int, rate: int | None, go: Any, done: Any
) -> None:
    client = redis.Redis.from_url(url)
    messages = [message(i, i, task_id) for i in range(1, n + 1)]
    try:
        go.wait()
        started = time.perf_counter()
        for i, text in enumerate(messages, 1):
            client.publish(channel, text)
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
    finally:
        client.close()
        done.set()


class _Sink:
    """Stands in for a stream's connection: counts the chunks the hub writes to it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.written = 0
        self.all_written = asyncio.get_running_loop().create_future()

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written += 1
        if self.written == self.expected:
            self.all_written.set_result(None)


async def _measure(url: str, n: int, rate: int) -> HubCost:
    tune_gc()  # as the web process does
    keys = Keys("benchhub")
    client = aioredis.Redis.from_url(url)
    hub = Hub(client, keys, buffer=100_000)
    await hub.start()
    assert await hub.wait_live(10)
    sub = await hub.subscribe("served")

    async def run(
        task_id: str, count: int, pace: int | None, expect: bool, sink: _Sink | None = None
    ) -> float:
        channel = keys.task_channel(task_id)
        context = multiprocessing.get_context("spawn")
        go, done = context.Event(), context.Event()
        publisher = context.Process(
            target=_publish, args=(url, channel, task_id, count, pace, go, done)
        )
        publisher.start()
        await asyncio.sleep(1.0)  # the publisher's start-up is not the hub's
        cpu = time.thread_time()
        go.set()
        got = 0
        if sink is not None:
            await sink.all_written
            expect = False
        while expect and got < count:
            item = await sub.next(10)
            assert isinstance(item, Announcement), item
            item.frame()  # what a stream does before its write
            got += 1
        await asyncio.to_thread(done.wait)
        await asyncio.sleep(0.2)  # whatever is still on the way
        spent = time.thread_time() - cpu
        await asyncio.to_thread(publisher.join)
        return spent / count * 1e6

    served = await run("served", n, rate, True)
    burst = await run("served", n, None, True)
    # A stream that waits while the hub writes its changes to its connection, as a stream on
    # HTTP/1.1 does (its changes have seqs 1, 2, ... after the 0 it has sent).
    direct = await hub.subscribe("direct")
    sink = _Sink(n)
    direct.write_directly(sink, "")  # type: ignore[arg-type]
    direct.sent = 0
    waiting = asyncio.ensure_future(direct.next(3600))
    served_direct = await run("direct", n, rate, True, sink)
    waiting.cancel()
    hub.unsubscribe(direct)
    before = hub.received
    not_served = await run("elsewhere", n, rate, False)
    received = hub.received - before
    await hub.stop()
    await client.aclose()
    return HubCost(served, burst, served_direct, not_served, received, n, rate)


def measure(url: str, n: int = 10_000, rate: int = 2_000) -> HubCost:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_measure(url, n, rate))
