"""When Redis loses its data, `GET /events` ids start again: the stream says so with a new epoch,
and a client that names its old epoch is replayed the new history from its start."""

from __future__ import annotations

import json
import queue
import threading

import httpx
import pytest
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


def test_a_lost_history_is_announced_and_old_ids_replay_the_new_one(forgetful_redis, tmp_path):
    svc = Service(forgetful_redis.url, tmp_path)
    stop = threading.Event()
    try:
        svc.start_worker(concurrency=1)
        svc.start_web()
        events: queue.Queue = queue.Queue()
        threading.Thread(target=listen, args=(svc.url, "", events, stop), daemon=True).start()
        kind, first_epoch = events.get(timeout=30)
        assert kind == "epoch" and first_epoch
        for _ in range(3):
            poll_until_done(svc.url, submit(svc.url, "add", x=1, y=2)["id"])
        before = next_of(events, lambda e: e[0] != "epoch" and e[0] >= 12)
        old_id = before[0]

        forgetful_redis.restart()  # every key gone: global seqs start again from 1
        assert wait_until_ready(svc.url, 30)
        new_task = submit(svc.url, "add", x=2, y=2)["id"]
        # The open stream announces the new history, then carries its changes from id 1.
        kind, second_epoch = next_of(events, lambda e: e[0] == "epoch")
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
