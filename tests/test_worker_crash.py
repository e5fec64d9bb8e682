"""A worker killed with SIGKILL mid-task: the task is run again, never lost or stuck STARTED."""

from __future__ import annotations

import time

import httpx

from tests.harness import assert_contiguous, poll_until_done, read_stream, submit


def test_sigkilled_worker_task_runs_again_and_the_stream_shows_it(make_service):
    svc = make_service(VISIBILITY_TIMEOUT_SECONDS="3")
    worker = svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=2, steps=8)

    seen = read_stream(svc.url, snap["id"], query="?last_event_id=0", max_events=5)
    assert [s["state"] for _, s in seen][-1] == "PROGRESS"
    worker.kill()  # SIGKILL to the whole process group: main process and pool child
    time.sleep(0.3)
    stuck = httpx.get(f"{svc.url}/tasks/{snap['id']}").json()
    assert stuck["state"] == "PROGRESS"

    svc.start_worker(concurrency=1)
    rest = read_stream(svc.url, snap["id"], headers={"Last-Event-ID": str(seen[-1][0])})
    ids = [i for i, _ in seen + rest]
    assert_contiguous(ids, first=1)
    states = [s["state"] for _, s in rest]
    # Run again from the start: received and started anew, then all its steps, then success.
    assert states[states.index("RECEIVED") + 1] == "STARTED"
    assert states[-1] == "SUCCESS"
    assert states.count("SUCCESS") == 1
    assert poll_until_done(svc.url, snap["id"])["result"] == {"slept": 2}
