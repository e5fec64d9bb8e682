"""Redis restarted mid-task: readiness says so, and no client loses or repeats a change."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from httpx_sse import connect_sse

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


def follow(base: str, task_id: str, out: list[tuple[int, dict]], stop: threading.Event) -> None:
    """A client that reconnects with Last-Event-ID whenever its stream breaks, as EventSource."""
    last: int | None = None
    while not stop.is_set():
        headers = {} if last is None else {"Last-Event-ID": str(last)}
        query = "?last_event_id=0" if last is None else ""
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30, connect=2)) as client,
                connect_sse(client, "GET", f"{base}/tasks/{task_id}/events{query}",
                            headers=headers) as source,
            ):  # fmt: skip
                if source.response.status_code == 204:
                    return
                source.response.raise_for_status()
                for sse in source.iter_sse():
                    if sse.data:
                        event = (int(sse.id), json.loads(sse.data))
                        out.append(event)
                        last = event[0]
                        if event[1]["state"] in TERMINAL:
                            return
        except httpx.HTTPError:
            time.sleep(0.2)


def wait_ready(base: str, status: int, timeout: float) -> None:
    assert wait_until_ready(base, timeout, status=status), f"/readyz never answered {status}"


def test_redis_restart_mid_task(durable_redis, tmp_path):
    svc = Service(durable_redis.url, tmp_path)
    try:
        svc.start_worker(concurrency=1)
        svc.start_web()
        snap = submit(svc.url, "sleep", seconds=4, steps=16)
        seen: list[tuple[int, dict]] = []
        stop = threading.Event()
        client = threading.Thread(target=follow, args=(svc.url, snap["id"], seen, stop))
        client.start()
        while len(seen) < 5:
            time.sleep(0.05)

        durable_redis.halt()
        wait_ready(svc.url, 503, timeout=10)
        assert httpx.get(f"{svc.url}/readyz").json()["redis"] is False
        time.sleep(1)
        durable_redis.start()
        wait_ready(svc.url, 200, timeout=20)

        client.join(60)
        stop.set()
        ids = [i for i, _ in seen]
        assert_contiguous(ids, first=1)
        states = [s["state"] for _, s in seen]
        assert states[-1] == "SUCCESS"
        assert sum(s in TERMINAL for s in states) == 1
        assert poll_until_done(svc.url, snap["id"])["seq"] == ids[-1]
        # Web and worker carried on without a restart of their own.
        assert all(p.popen.poll() is None for p in svc.webs + svc.workers)
        after = submit(svc.url, "add", x=1, y=1)
        assert poll_until_done(svc.url, after["id"], timeout=30)["result"] == 2
    finally:
        svc.stop()
