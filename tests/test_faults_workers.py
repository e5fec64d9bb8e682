"""Workers that die, overrun or stop: every task still ends honestly, never stuck."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.harness import assert_contiguous, children, poll_until_done, read_stream, submit


def wait_for(base: str, task_id: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/tasks/{task_id}").json()["state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"never {state}")


def test_a_killed_pool_child_ends_its_task_failure_worker_lost(make_service):
    svc = make_service()
    worker = svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=20, steps=40)
    wait_for(svc.url, snap["id"], "PROGRESS")
    pool = children(worker.pid)
    assert pool
    for child in pool:
        os.kill(child, signal.SIGKILL)
    done = poll_until_done(svc.url, snap["id"], timeout=30)
    assert done["state"] == "FAILURE"
    assert done["error"]["type"] == "WorkerLostError"
    events = read_stream(svc.url, snap["id"], query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    # The worker replaced its child and goes on working.
    assert poll_until_done(svc.url, submit(svc.url, "add", x=1, y=2)["id"])["result"] == 3


@pytest.mark.parametrize(
    ("setting", "error_type"),
    [("TASK_TIME_LIMIT_SECONDS", "TimeLimitExceeded"),
     ("TASK_SOFT_TIME_LIMIT_SECONDS", "SoftTimeLimitExceeded")],
)  # fmt: skip
def test_a_task_over_its_time_limit_ends_failure_with_a_clear_type(
    make_service, setting, error_type
):
    svc = make_service(**{setting: "1"})
    svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=10, steps=10)
    done = poll_until_done(svc.url, snap["id"], timeout=30)
    assert done["state"] == "FAILURE"
    assert done["error"]["type"] == error_type
    assert poll_until_done(svc.url, submit(svc.url, "add", x=2, y=2)["id"])["result"] == 4


def test_a_worker_stopped_gracefully_finishes_the_task_in_hand(make_service):
    svc = make_service()
    worker = svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=1.5, steps=5)
    wait_for(svc.url, snap["id"], "PROGRESS")
    os.kill(worker.pid, signal.SIGTERM)  # warm shutdown: the main process only
    done = poll_until_done(svc.url, snap["id"], timeout=30)
    assert done["state"] == "SUCCESS"
    assert worker.popen.wait(30) == 0
    events = read_stream(svc.url, snap["id"], query="?last_event_id=0")
    assert [s["state"] for _, s in events].count("STARTED") == 1
