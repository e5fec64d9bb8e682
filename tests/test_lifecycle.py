"""Each demonstration task from submission to its end, seen by polling and by streaming."""

from __future__ import annotations

import subprocess

import httpx

from tests.harness import assert_contiguous, poll_until_done, read_stream, submit


def states(events: list[tuple[int, dict]]) -> list[str]:
    return [snap["state"] for _, snap in events]


def test_submit_answers_202_with_location_and_the_pending_snapshot(service):
    response = httpx.post(f"{service.url}/tasks", json={"task": "add", "args": [2, 3]})
    assert response.status_code == 202
    snap = response.json()
    assert response.headers["location"] == f"/tasks/{snap['id']}"
    assert snap["state"] == "PENDING"
    assert snap["seq"] == 1
    assert snap["task"] == "add"
    assert snap["links"] == {
        "self": f"/tasks/{snap['id']}",
        "events": f"/tasks/{snap['id']}/events",
    }
    assert set(snap) == {
        "id", "task", "state", "seq", "progress", "result", "error", "retries", "submitted_at",
        "started_at", "finished_at", "updated_at", "links",
    }  # fmt: skip


def test_add_over_poll_and_stream(service):
    snap = submit(service.url, "add", x=2, y=3.5)
    done = poll_until_done(service.url, snap["id"])
    assert done["state"] == "SUCCESS"
    assert done["result"] == 5.5
    assert done["error"] is None
    assert done["started_at"] <= done["finished_at"] <= done["updated_at"]
    events = read_stream(service.url, snap["id"], query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    assert [s["seq"] for _, s in events] == [i for i, _ in events]


def test_add_keeps_integers_integers(service):
    snap = submit(service.url, "add", x=2, y=3)
    assert poll_until_done(service.url, snap["id"])["result"] == 5


def test_sleep_reports_each_step_then_succeeds(service):
    snap = submit(service.url, "sleep", seconds=0.5, steps=5)
    events = read_stream(service.url, snap["id"], query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED"] + ["PROGRESS"] * 5 + ["SUCCESS"]
    progress = [s["progress"] for _, s in events if s["state"] == "PROGRESS"]
    assert [p["current"] for p in progress] == [1, 2, 3, 4, 5]
    assert [p["percent"] for p in progress] == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert progress[0]["message"] == "step 1 of 5"
    final = events[-1][1]
    assert final["result"] == {"slept": 0.5}
    assert poll_until_done(service.url, snap["id"]) == final


def test_fail_shows_type_and_message_and_no_traceback(service):
    snap = submit(service.url, "fail", message="disk on fire")
    events = read_stream(service.url, snap["id"], query="?last_event_id=0")
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "FAILURE"]
    error = events[-1][1]["error"]
    assert error == {"type": "RuntimeError", "message": "disk on fire"}
    assert "Traceback" not in httpx.get(f"{service.url}/tasks/{snap['id']}").text


def test_flaky_shows_each_retry_then_succeeds(service):
    snap = submit(service.url, "flaky", failures=2)
    events = read_stream(service.url, snap["id"], query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == [
        "PENDING", "RECEIVED", "STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS",
    ]  # fmt: skip
    retries = [s for _, s in events if s["state"] == "RETRY"]
    assert [r["retries"] for r in retries] == [1, 2]
    assert retries[0]["error"]["type"] == "FlakyError"
    assert events[-1][1]["result"] == "ok"
    assert events[-1][1]["retries"] == 2


def test_unknown_id_is_404_not_pending(service):
    for path in ("/tasks/nope", "/tasks/nope/events", "/tasks/" + "0" * 36):
        response = httpx.get(service.url + path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    assert httpx.delete(f"{service.url}/tasks/nope").status_code == 404


def test_curl_follows_the_stream_and_exits_by_itself(service):
    snap = submit(service.url, "sleep", seconds=0.6, steps=3)
    result = subprocess.run(
        ["curl", "-N", "-s", "-i", f"{service.url}/tasks/{snap['id']}/events"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    assert "cache-control: no-cache" in head.lower()
    assert "x-accel-buffering: no" in head.lower()
    assert body.startswith("retry: 2000\n\n")
    assert "event:" not in body
    assert body.rstrip().endswith("}")
    assert '"state":"SUCCESS"' in body.strip().split("\n\n")[-1]
