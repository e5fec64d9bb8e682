"""Redis restarted mid-task: readiness says so, and no client loses or repeats a change."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from taskstream.celery_app import create_celery
from taskstream.client import Client, Follow, FollowOptions
from taskstream.settings import Settings
from tests.harness import (
    TERMINAL,
    RedisServer,
    Service,
    assert_contiguous,
    poll_until_done,
    submit,
    wait_until_ready,
)


@pytest.fixture
def durable_redis():
    # Persistence on, so a restart keeps what was recorded, as a production Redis does.
    server = RedisServer(persist=True).start()
    yield server
    server.stop()


# Streaming only, as EventSource does: the proof is that the streams alone lose nothing.
STREAM_ONLY = FollowOptions(patience=60, stream_attempts=1_000)


def collect(follow: Follow, out: list[dict]) -> None:
    out.extend(follow)


def wait_ready(base: str, status: int, timeout: float) -> None:
    assert wait_until_ready(base, timeout, status=status), f"/readyz never answered {status}"


def test_redis_restart_mid_task(durable_redis, tmp_path):
    svc = Service(durable_redis.url, tmp_path)
    try:
        svc.start_worker(concurrency=1)
        svc.start_web()
        snap = submit(svc.url, "sleep", seconds=4, steps=16)
        seen: list[dict] = []
        client = Client(svc.url)
        follow = client.follow(snap["id"], after=0, options=STREAM_ONLY)
        follower = threading.Thread(target=collect, args=(follow, seen), daemon=True)
        follower.start()
        while len(seen) < 5:
            time.sleep(0.05)

        durable_redis.halt()
        wait_ready(svc.url, 503, timeout=10)
        assert httpx.get(f"{svc.url}/readyz").json()["redis"] is False
        time.sleep(1)
        durable_redis.start()
        wait_ready(svc.url, 200, timeout=20)

        follower.join(60)
        client.close()
        ids = [s["seq"] for s in seen]
        assert_contiguous(ids, first=1)
        assert follow.stats.repeated == 0
        states = [s["state"] for s in seen]
        assert states[-1] == "SUCCESS"
        assert sum(s in TERMINAL for s in states) == 1
        assert poll_until_done(svc.url, snap["id"])["seq"] == ids[-1]
        # Web and worker carried on without a restart of their own.
        assert all(p.popen.poll() is None for p in svc.webs + svc.workers)
        after = submit(svc.url, "add", x=1, y=1)
        assert poll_until_done(svc.url, after["id"], timeout=30)["result"] == 2
    finally:
        svc.stop()


def test_workers_with_tasks_in_hand_survive_a_redis_restart(durable_redis, tmp_path):
    # kombu 5.7 closes a channel that lost Redis by putting its unacknowledged messages back
    # through a connection that is already gone; unguarded, that AttributeError ended the worker
    # (seen in the soak: both workers gone after a Redis restart, with tasks in hand).
    svc = Service(durable_redis.url, tmp_path)
    try:
        for _ in range(2):
            svc.start_worker(concurrency=2)
        svc.start_web()
        tasks = [submit(svc.url, "sleep", seconds=3, steps=6) for _ in range(4)]
        for task in tasks:
            deadline = time.monotonic() + 20
            while httpx.get(f"{svc.url}/tasks/{task['id']}").json()["state"] == "PENDING":
                assert time.monotonic() < deadline, "the workers did not take the tasks"
                time.sleep(0.05)
        durable_redis.restart(down_seconds=1.5)
        wait_ready(svc.url, 200, timeout=20)
        for task in tasks:
            assert poll_until_done(svc.url, task["id"], timeout=60)["state"] == "SUCCESS"
        assert all(p.popen.poll() is None for p in svc.workers), "a worker ended"
        after = submit(svc.url, "add", x=2, y=3)
        assert poll_until_done(svc.url, after["id"], timeout=30)["result"] == 5
    finally:
        svc.stop()


def test_a_task_that_ends_while_redis_is_away_longer_than_retries_is_recorded(
    durable_redis, tmp_path
):
    # The worker's client retries a record for about half a minute; a task that ends during a
    # longer outage must still have its end recorded once Redis is back, or its followers wait
    # for ever (until the message ran again, after VISIBILITY_TIMEOUT_SECONDS).
    import tests.record_app  # noqa: F401  (registers the shared tasks)

    svc = Service(durable_redis.url, tmp_path, extra_env={"CELERY_APP": "tests.record_app:app"})
    celery = create_celery(Settings.from_env(redis_url=durable_redis.url, key_prefix=svc.prefix))
    try:
        svc.start_worker(concurrency=1)
        svc.start_web()
        # No progress reports: its one record while Redis is away is its end.
        task_id = celery.tasks["tests.record_app.big_result"].delay(10, 3.0).id
        deadline = time.monotonic() + 20
        while httpx.get(f"{svc.url}/tasks/{task_id}").json()["state"] != "STARTED":
            assert time.monotonic() < deadline, "the worker did not start the task"
            time.sleep(0.05)
        durable_redis.halt()
        time.sleep(45)
        durable_redis.start()
        wait_ready(svc.url, 200, timeout=20)
        final = poll_until_done(svc.url, task_id, timeout=40)
        assert final["state"] == "SUCCESS" and final["result"] == "x" * 10
        assert "waits to be recorded" in svc.workers[0].log_path.read_text()
    finally:
        svc.stop()
        celery.close()
