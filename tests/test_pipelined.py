"""Script calls pipelined on one connection (POST /tasks's record and push) answer each caller with
its own reply, as redis-py would, through error replies, a flushed script cache, a Redis that dies
with calls in flight, and one that stops answering."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskstream.pipelined import Pipelined, pack, read_reply
from tests.harness import RedisServer, new_prefix

ECHO = "return {ARGV[1], tonumber(ARGV[2]), false, {KEYS[1], redis.call('INCR', KEYS[1])}}"
FAIL = "return redis.error_reply('ERR refused: ' .. ARGV[1])"


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def pipelined(url: str, timeout: float = 10.0, name: str | None = None) -> Pipelined:
    client = aioredis.Redis.from_url(
        url, decode_responses=True, socket_timeout=timeout, client_name=name
    )
    return Pipelined(client, timeout=timeout)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


async def test_many_calls_in_flight_each_get_their_own_reply_as_redis_py_reads_it(redis_url):
    key = f"{new_prefix()}:n"
    calls = pipelined(redis_url)
    reference = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        replies = await asyncio.gather(
            *(calls.evalsha(sha(ECHO), ECHO, [key], [f"caller {i} ✓", i]) for i in range(300))
        )
        assert [r[:3] for r in replies] == [[f"caller {i} ✓", i, None] for i in range(300)]
        # Each ran exactly once.
        assert sorted(r[3][1] for r in replies) == list(range(1, 301))
        assert await reference.eval(ECHO, 1, key, "caller x ✓", 7) == [
            "caller x ✓",
            7,
            None,
            [key, 301],
        ]
    finally:
        await reference.delete(key)
        await reference.aclose()
        await calls.close()


async def test_a_caller_that_gives_up_leaves_the_other_replies_with_their_own_callers(
    private_redis,
):
    calls = pipelined(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        await calls.evalsha(sha(ECHO), ECHO, ["k"], ["warm", 0])
        admin.client_pause(500, all=False)  # the replies come after the cancels below
        pending = [
            asyncio.ensure_future(calls.evalsha(sha(ECHO), ECHO, ["k"], [f"c{i}", i]))
            for i in range(10)
        ]
        await asyncio.sleep(0.1)
        for i in (0, 3, 4, 9):  # as a request's task is cancelled when its client goes away
            pending[i].cancel()
        kept = [p for i, p in enumerate(pending) if i not in (0, 3, 4, 9)]
        replies = await asyncio.wait_for(asyncio.gather(*kept), 5)
        assert [r[:2] for r in replies] == [[f"c{i}", i] for i in (1, 2, 5, 6, 7, 8)]
        assert (await calls.evalsha(sha(ECHO), ECHO, ["k"], ["after", 11]))[:2] == ["after", 11]
    finally:
        admin.close()
        await calls.close()


async def test_an_error_reply_raises_for_its_caller_only_and_the_connection_goes_on(redis_url):
    calls = pipelined(redis_url)
    key = f"{new_prefix()}:n"
    try:
        results = await asyncio.gather(
            calls.evalsha(sha(ECHO), ECHO, [key], ["a", 1]),
            calls.evalsha(sha(FAIL), FAIL, [], ["b"]),
            calls.evalsha(sha(ECHO), ECHO, [key], ["c", 3]),
            return_exceptions=True,
        )
        assert results[0][:2] == ["a", 1] and results[2][:2] == ["c", 3]
        assert isinstance(results[1], ResponseError) and "refused: b" in str(results[1])
        assert (await calls.evalsha(sha(ECHO), ECHO, [key], ["d", 4]))[:2] == ["d", 4]
    finally:
        await calls.close()
        redis.Redis.from_url(redis_url).delete(key)


async def test_a_flushed_script_cache_is_filled_again(private_redis):
    calls = pipelined(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        assert (await calls.evalsha(sha(ECHO), ECHO, ["k"], ["before", 1]))[0] == "before"
        admin.script_flush()
        assert admin.script_exists(sha(ECHO)) == [False]
        assert (await calls.evalsha(sha(ECHO), ECHO, ["k"], ["after", 2]))[0] == "after"
        assert admin.script_exists(sha(ECHO)) == [True]
    finally:
        admin.close()
        await calls.close()


async def test_calls_in_flight_on_a_connection_that_is_cut_are_sent_again_on_a_new_one(
    private_redis,
):
    name = "pipelined-under-test"
    calls = pipelined(private_redis.url, name=name)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        await calls.evalsha(sha(ECHO), ECHO, ["k"], ["warm", 0])
        # Writes wait in Redis meanwhile: the calls below are sent and stay unanswered.
        admin.client_pause(1500, all=False)
        pending = [
            asyncio.ensure_future(calls.evalsha(sha(ECHO), ECHO, ["k"], [f"c{i}", i]))
            for i in range(20)
        ]
        await asyncio.sleep(0.2)
        assert not any(p.done() for p in pending)
        (cut,) = [c["id"] for c in admin.client_list() if c["name"] == name]
        assert admin.client_kill_filter(_id=cut) == 1
        replies = await asyncio.wait_for(asyncio.gather(*pending), 10)
        assert [r[:2] for r in replies] == [[f"c{i}", i] for i in range(20)]
        # None ran on the cut connection; each ran once on the new one.
        assert sorted(r[3][1] for r in replies) == list(range(2, 22))
        assert [c["id"] for c in admin.client_list() if c["name"] == name] != [cut]
    finally:
        admin.close()
        await calls.close()


async def test_a_redis_that_stops_answering_times_the_call_out_and_is_used_again_after(
    private_redis,
):
    calls = pipelined(private_redis.url, timeout=0.5)
    try:
        await calls.evalsha(sha(ECHO), ECHO, ["k"], ["warm", 0])
        assert private_redis.process is not None
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await asyncio.wait_for(calls.evalsha(sha(ECHO), ECHO, ["k"], ["lost", 1]), 10)
        assert time.monotonic() - started < 5
        os.kill(private_redis.process.pid, signal.SIGCONT)
        assert (await calls.evalsha(sha(ECHO), ECHO, ["k"], ["back", 2]))[:2] == ["back", 2]
    finally:
        await calls.close()


def test_replies_split_anywhere_are_read_whole_and_commands_are_packed_as_redis_py_packs_them():
    reply = b"*4\r\n:1\r\n$6\r\nh\xc3\xa9llo\r\n$-1\r\n*2\r\n_\r\n#t\r\n"
    for cut in range(len(reply)):
        assert read_reply(reply[:cut] if cut else b"", 0)[1] == 0  # not all here: nothing taken
    assert read_reply(reply + b":7\r\n", 0) == ([1, "héllo", None, [None, True]], len(reply))
    parts = ("EVALSHA", "abc", 2, 1.5, b"raw", "é")
    assert pack(parts) == b"".join(aioredis.connection.Connection().pack_command(*parts))
