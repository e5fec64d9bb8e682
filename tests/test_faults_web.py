"""Web processes under faults: SIGTERM with streams open, stalled clients, two of each process."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx

from taskstream.record import Change
from tests.harness import (
    Service,
    accept_directly,
    assert_contiguous,
    direct_recorder,
    metric,
    poll_until_done,
    read_stream,
    submit,
)


def test_sigterm_ends_streams_at_once_and_clients_resume_on_another_process(make_service):
    svc = make_service()
    svc.start_worker(concurrency=2)
    web_a = svc.start_web()
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=4, steps=20)
    seen = read_stream(svc.url_of(0), snap["id"], query="?last_event_id=0", max_events=4)

    ended = threading.Event()
    tail: list[tuple[int, dict]] = []

    def follow_a() -> None:
        tail.extend(read_stream(svc.url_of(0), snap["id"],
                                headers={"Last-Event-ID": str(seen[-1][0])}))  # fmt: skip
        ended.set()

    follower = threading.Thread(target=follow_a)
    follower.start()
    time.sleep(0.5)
    stopped_at = time.monotonic()
    web_a.signal_group(signal.SIGTERM)
    assert ended.wait(5), "the stream did not end on SIGTERM"
    assert web_a.popen.wait(8) is not None
    assert time.monotonic() - stopped_at < 8  # well inside Hypercorn's graceful timeout of 10 s
    follower.join()
    assert tail and tail[-1][1]["state"] != "SUCCESS"  # it ended early, mid-task

    last = (seen + tail)[-1][0]
    rest = read_stream(svc.url_of(1), snap["id"], headers={"Last-Event-ID": str(last)})
    ids = [i for i, _ in seen + tail + rest]
    assert_contiguous(ids, first=1)
    assert rest[-1][1]["state"] == "SUCCESS"


def test_two_web_processes_and_two_workers_serve_the_same_ids(make_service):
    svc = make_service()
    svc.start_worker(concurrency=1)
    svc.start_worker(concurrency=1)
    svc.start_web()
    svc.start_web()
    tasks = [submit(svc.url_of(n % 2), "sleep", seconds=1, steps=10)["id"] for n in range(4)]
    results: dict[tuple[str, int], list[int]] = {}

    def watch(task_id: str, web: int) -> None:
        events = read_stream(svc.url_of(web), task_id, query="?last_event_id=0")
        results[(task_id, web)] = [i for i, _ in events]

    threads = [threading.Thread(target=watch, args=(t, w)) for t in tasks for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for task_id in tasks:
        assert results[(task_id, 0)] == results[(task_id, 1)]
        assert_contiguous(results[(task_id, 0)], first=1)
        assert poll_until_done(svc.url, task_id)["state"] == "SUCCESS"
    # Both workers took part.
    logs = [w.log_path.read_text() for w in svc.workers]
    assert all("Task sleep[" in text for text in logs)


def _assert_dropped_alone(svc: Service) -> None:
    """Within 10 s the web dropped one stalled client, and no stream is left open."""
    deadline = time.monotonic() + 10
    while metric(svc.url, "slow_clients_dropped_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(svc.url, "slow_clients_dropped_total") == 1
    assert metric(svc.url, "open_streams") == 0


def test_a_client_that_stops_reading_is_dropped_and_costs_others_nothing(make_service):
    svc = make_service(STREAM_WRITE_TIMEOUT_SECONDS="1", STREAM_BUFFER="8")
    svc.start_web()
    # A task whose author reports big progress messages, recorded as a worker would: ~13 MB
    # in all, more than the socket buffers between a server and a client that stopped reading.
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", svc.ports[0]))
    stalled.sendall(f"GET /tasks/{task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert stalled.recv(1024).startswith(b"HTTP/1.1 200")
    # ...and it never reads again. A well-behaved client follows the same task meanwhile.
    good: list[tuple[int, dict]] = []
    reader = threading.Thread(
        target=lambda: good.extend(read_stream(svc.url, task_id, query="?last_event_id=0"))
    )
    reader.start()
    big = "x" * 64_000
    for n in range(1, 201):
        progress = {"current": n, "total": 200, "percent": n / 2, "message": big}
        recorder.record(Change(task_id, {"state": "PROGRESS", "progress": progress}))
        time.sleep(0.005)
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": "done"}))
    reader.join(30)
    recorder.client.close()
    assert_contiguous([i for i, _ in good], first=1)
    assert good[-1][1]["state"] == "SUCCESS"

    _assert_dropped_alone(svc)
    stalled.close()


def test_an_http2_client_that_grants_no_window_is_dropped_too(make_service):
    import h2.config
    import h2.connection
    import h2.settings

    svc = make_service(STREAM_WRITE_TIMEOUT_SECONDS="1", STREAM_BUFFER="8")
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    # HTTP/2 (prior knowledge) with a flow-control window of 0: the server may send headers but
    # no data, as a client that stopped reading its streams ends up.
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.send_headers(1, [(":method", "GET"), (":path", f"/tasks/{task_id}/events"),
                            (":scheme", "http"), (":authority", f"127.0.0.1:{svc.ports[0]}")],
                        end_stream=True)  # fmt: skip
    stalled = socket.create_connection(("127.0.0.1", svc.ports[0]))
    stalled.sendall(client.data_to_send())
    deadline = time.monotonic() + 10
    while metric(svc.url, "open_streams") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(svc.url, "open_streams") == 1
    big = "x" * 4_000
    for n in range(1, 101):
        progress = {"current": n, "total": 100, "percent": n, "message": big}
        recorder.record(Change(task_id, {"state": "PROGRESS", "progress": progress}))
    recorder.client.close()
    # What it cannot take is held in a bounded buffer, and the client is dropped in time: it
    # was held in Hypercorn's, without bound, for as long as the connection stayed open.
    _assert_dropped_alone(svc)
    stalled.close()


def test_metrics_follow_streams_and_tasks(service):
    before_submitted = metric(service.url, "tasks_submitted_total")
    snap = submit(service.url, "sleep", seconds=2, steps=2)
    with httpx.stream("GET", f"{service.url}/tasks/{snap['id']}/events") as response:
        chunks = response.iter_bytes()
        next(chunks)
        opened = metric(service.url, "open_streams")
        assert b'"state"' in next(chunks)
        assert opened >= 1
        # This process hears the task's changes while it streams it: follow it to the end.
        assert any(b'"SUCCESS"' in chunk for chunk in chunks)
    poll_until_done(service.url, snap["id"])
    assert metric(service.url, "tasks_submitted_total") == before_submitted + 1
    assert metric(service.url, "subscriber_live") == 1
    text = httpx.get(f"{service.url}/metrics").text
    assert "# TYPE taskstream_events_delivered_total counter" in text
    assert 'taskstream_changes_received_total{state="SUCCESS"}' in text
    assert 'method="POST",route="/tasks",status="2xx"' in text


def test_logs_are_structured_with_the_task_id(make_service):
    svc = make_service(LOG_FORMAT="json")
    worker = svc.start_worker(concurrency=1)
    web = svc.start_web()
    snap = submit(svc.url, "fail", message="logged")
    poll_until_done(svc.url, snap["id"])
    time.sleep(0.3)
    for proc in (web, worker):
        records = []
        for line in proc.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        assert records, proc.name
        assert {"ts", "level", "logger", "msg"} <= set(records[0])
        mine = [r for r in records if r.get("task_id") == snap["id"]]
        assert mine, f"no record of {proc.name} names the task"
