"""The hub's own CPU per change, in process: from the bytes on its pub/sub socket to the encoded
SSE frame a stream is about to write (the write itself, Hypercorn's and the kernel's, excluded).

A hub (as a web process runs it, on uvloop) follows one task with one stream; a publisher thread
announces changes in the record's format on that task's channel, then on other tasks' channels.
The figure is the CPU time of the hub's thread (time.thread_time) divided by the changes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
import uvloop

from taskstream.keys import Keys
from taskstream.web.hub import Announcement, Hub

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
    not_served_us: float  # CPU per change of a task this process streams not
    received_not_served: int  # messages the hub received of those
    changes: int
    rate: int


def _publish(url: str, channel: str, task_id: str, n: int, rate: int | None) -> None:
    client = redis.Redis.from_url(url)
    try:
        started = time.perf_counter()
        for i in range(1, n + 1):
            client.publish(channel, message(i, i, task_id))
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
    finally:
        client.close()


async def _measure(url: str, n: int, rate: int) -> HubCost:
    keys = Keys("benchhub")
    client = aioredis.Redis.from_url(url)
    hub = Hub(client, keys, buffer=100_000)
    await hub.start()
    assert await hub.wait_live(10)
    sub = await hub.subscribe("served")

    async def run(task_id: str, count: int, pace: int | None, expect: bool) -> float:
        channel = keys.task_channel(task_id)
        publisher = threading.Thread(target=_publish, args=(url, channel, task_id, count, pace))
        cpu = time.thread_time()
        publisher.start()
        got = 0
        while expect and got < count:
            item = await sub.next(10)
            assert isinstance(item, Announcement), item
            item.frame()  # what a stream does before its write
            got += 1
        await asyncio.to_thread(publisher.join)
        await asyncio.sleep(0.2)  # whatever is still on the way
        return (time.thread_time() - cpu) / count * 1e6

    served = await run("served", n, rate, True)
    burst = await run("served", n, None, True)
    before = hub.received
    not_served = await run("elsewhere", n, rate, False)
    received = hub.received - before
    await hub.stop()
    await client.aclose()
    return HubCost(served, burst, not_served, received, n, rate)


def measure(url: str, n: int = 10_000, rate: int = 2_000) -> HubCost:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_measure(url, n, rate))
