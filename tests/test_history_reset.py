"""When Redis loses its data, `GET /events` ids start again: the stream says so with a new epoch,
and a client that names its old epoch is replayed the new history from its start."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest
import redis
from httpx_sse import connect_sse

from tests.harness import RedisServer, Service, poll_until_done, submit, wait_until_ready


@pytest.fixture
def forgetful_redis():
    # No persistence: a restart loses every key, as a Redis without disk or replicas does.
    server = RedisServer().start()
    yield server
    server.stop()


def listen(base: str, query: str, out: queue.Queue, stop: threading.Event) -> None:
    with (
        httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
        connect_sse(client, "GET", f"{base}/events{query}") as source,
    ):
        for event in source.iter_sse():
            if event.event == "epoch":
                out.put(("epoch", json.loads(event.data)["epoch"]))
            elif event.data:
                out.put((int(event.id), json.loads(event.data)["id"]))
            if stop.is_set():
                return


def next_of(events: queue.Queue, predicate, wait: float = 30.0):
    while True:
        item = events.get(timeout=wait)
        if predicate(item):
            return item


def _listening_after_three_tasks(svc: Service, stop: threading.Event) -> tuple[queue.Queue, str]:
    """Start the service, open GET /events (its first event: the epoch), and run three tasks:
    the events heard, and that first epoch."""
    svc.start_worker(concurrency=1)
    svc.start_web()
    events: queue.Queue = queue.Queue()
    threading.Thread(target=listen, args=(svc.url, "", events, stop), daemon=True).start()
    kind, epoch = events.get(timeout=30)
    assert kind == "epoch" and epoch
    for _ in range(3):
        poll_until_done(svc.url, submit(svc.url, "add", x=1, y=2)["id"])
    return events, epoch


def test_a_lost_history_is_announced_and_old_ids_replay_the_new_one(forgetful_redis, tmp_path):
    svc = Service(forgetful_redis.url, tmp_path)
    stop = threading.Event()
    try:
        events, first_epoch = _listening_after_three_tasks(svc, stop)
        before = next_of(events, lambda e: e[0] != "epoch" and e[0] >= 12)
        old_id = before[0]

        forgetful_redis.restart()  # every key gone: global seqs start again from 1
        assert wait_until_ready(svc.url, 30)
        new_task = submit(svc.url, "add", x=2, y=2)["id"]
        # The open stream announces the new history, then carries its changes from id 1.
        _, second_epoch = next_of(events, lambda e: e[0] == "epoch")
        assert second_epoch != first_epoch
        after_reset = next_of(events, lambda e: e[1] == new_task)
        assert after_reset[0] < old_id
        poll_until_done(svc.url, new_task)

        # A client resuming with its old id and old epoch is replayed the new history from 1,
        # not silently skipped past it; without the epoch it starts from now, as before.
        replay: queue.Queue = queue.Queue()
        query = f"?last_event_id={old_id}&epoch={first_epoch}"
        threading.Thread(target=listen, args=(svc.url, query, replay, stop), daemon=True).start()
        assert replay.get(timeout=30) == ("epoch", second_epoch)
        first = next_of(replay, lambda e: e[0] != "epoch")
        assert first[0] == 1
    finally:
        stop.set()
        svc.stop()


def test_a_history_flushed_while_redis_stays_up_is_announced_on_the_open_stream(
    forgetful_redis, tmp_path
):
    # FLUSHALL (an operator, a script) loses every key without closing any connection: the open
    # stream hears the new history's changes, numbered from 1 again, on the same subscription.
    svc = Service(forgetful_redis.url, tmp_path)
    stop = threading.Event()
    try:
        events, first_epoch = _listening_after_three_tasks(svc, stop)
        old_id = next_of(events, lambda e: e[0] != "epoch" and e[0] >= 12)[0]

        redis.Redis.from_url(forgetful_redis.url).flushall()
        new_task = submit(svc.url, "add", x=2, y=2)["id"]
        poll_until_done(svc.url, new_task)
        _, second_epoch = next_of(events, lambda e: e[0] == "epoch", wait=15)
        assert second_epoch != first_epoch
        # Every change of the new history, from its first: none skipped as already sent.
        after_reset = [next_of(events, lambda e: e[0] != "epoch", wait=15) for _ in range(4)]
        assert [e[0] for e in after_reset] == [1, 2, 3, 4]
        assert {e[1] for e in after_reset} == {new_task}
        assert after_reset[-1][0] < old_id
    finally:
        stop.set()
        svc.stop()


def test_a_task_stream_ends_when_its_history_is_flushed_and_resuming_gives_the_task_as_it_is(
    forgetful_redis, tmp_path
):
    # The worker records the task again after FLUSHALL (from seq 1): the open stream, which sent
    # seqs up to 4 or more, must not wait for ever on changes it takes for ones already sent.
    svc = Service(forgetful_redis.url, tmp_path)
    try:
        svc.start_worker(concurrency=1)
        svc.start_web()
        task = submit(svc.url, "sleep", seconds=4, steps=8)["id"]
        ids: list[int] = []
        flushed_at = None
        with (
            httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
            connect_sse(client, "GET", f"{svc.url}/tasks/{task}/events") as source,
        ):
            for event in source.iter_sse():
                if event.id:
                    ids.append(int(event.id))
                if flushed_at is None and ids and ids[-1] >= 4:
                    redis.Redis.from_url(forgetful_redis.url).flushall()
                    flushed_at = time.monotonic()
        assert flushed_at is not None
        assert time.monotonic() - flushed_at < 15  # ended, not left waiting
        assert ids == sorted(ids) and ids[-1] < 9  # no terminal change of the old history
        final = poll_until_done(svc.url, task)
        assert final["state"] == "SUCCESS" and final["seq"] < ids[-1]
        # Resuming with the last id it had: the task as it now is, and the end.
        resumed = httpx.get(
            f"{svc.url}/tasks/{task}/events", headers={"Last-Event-ID": str(ids[-1])}, timeout=30
        )
        frames = [line for line in resumed.text.splitlines() if line.startswith("id: ")]
        assert frames == [f"id: {final['seq']}"]
    finally:
        svc.stop()
