"""DELETE /tasks/{id}: a queued task never starts, a running one stops; both end REVOKED."""

from __future__ import annotations

import time

import httpx

from tests.harness import poll_until_done, read_stream, submit


def wait_for_state(base: str, task_id: str, state: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = httpx.get(f"{base}/tasks/{task_id}").json()
        if snap["state"] == state:
            return snap
        time.sleep(0.05)
    raise AssertionError(f"{task_id} never reached {state}: {snap}")


def test_cancel_queued_and_running(make_service):
    svc = make_service()
    svc.start_worker(concurrency=1)
    svc.start_web()
    running = submit(svc.url, "sleep", seconds=30, steps=300)
    wait_for_state(svc.url, running["id"], "PROGRESS")
    queued = submit(svc.url, "sleep", seconds=0.1, steps=1)

    # Queued: it answers 202 with the REVOKED snapshot at once.
    response = httpx.delete(f"{svc.url}/tasks/{queued['id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "REVOKED"

    # Running: it stops, and its stream ends with REVOKED.
    response = httpx.delete(f"{svc.url}/tasks/{running['id']}")
    assert response.status_code == 202
    revoked = response.json()
    assert revoked["state"] == "REVOKED"
    assert revoked["finished_at"] is not None
    events = read_stream(svc.url, running["id"], query=f"?last_event_id={revoked['seq'] - 1}")
    assert [s["state"] for _, s in events] == ["REVOKED"]

    # The worker is free again and runs new work; the queued task never started.
    after = submit(svc.url, "add", x=1, y=1)
    assert poll_until_done(svc.url, after["id"])["state"] == "SUCCESS"
    history = read_stream(svc.url, queued["id"], query="?last_event_id=0")
    assert [s["state"] for _, s in history] == ["PENDING", "REVOKED"]
    assert history[-1][1]["started_at"] is None

    # The running one made no progress after its cancel.
    time.sleep(0.5)
    final = httpx.get(f"{svc.url}/tasks/{running['id']}").json()
    assert final["seq"] == revoked["seq"]
    assert final["state"] == "REVOKED"


def test_cancel_a_finished_task_is_409(service):
    snap = submit(service.url, "add", x=1, y=1)
    poll_until_done(service.url, snap["id"])
    response = httpx.delete(f"{service.url}/tasks/{snap['id']}")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["state"] == "SUCCESS"
    assert httpx.get(f"{service.url}/tasks/{snap['id']}").json()["state"] == "SUCCESS"


def test_cancelled_task_stays_cancelled_when_a_worker_appears_later(make_service):
    # Queued with no worker at all, cancelled, then a worker starts: it must not run it.
    svc = make_service()
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=0.2, steps=2)
    assert httpx.delete(f"{svc.url}/tasks/{snap['id']}").status_code == 202
    svc.start_worker(concurrency=1)
    probe = submit(svc.url, "add", x=2, y=2)
    assert poll_until_done(svc.url, probe["id"])["result"] == 4
    history = read_stream(svc.url, snap["id"], query="?last_event_id=0")
    assert [s["state"] for _, s in history] == ["PENDING", "REVOKED"]


async def test_a_cancel_ends_the_task_when_it_changes_it(app):
    client = app.test_client()
    created = await client.post("/tasks", json={"task": "sleep", "kwargs": {"seconds": 1}})
    task_id = (await created.get_json())["id"]
    cancelled = await (await client.delete(f"/tasks/{task_id}")).get_json()
    assert cancelled["state"] == "REVOKED"
    # One change, one moment: the snapshot does not say it ended before it was last changed.
    assert cancelled["finished_at"] == cancelled["updated_at"]
    assert (await (await client.get(f"/tasks/{task_id}")).get_json()) == cancelled
