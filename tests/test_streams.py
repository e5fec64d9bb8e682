"""The event stream: resume, the end of a stream, many clients joining at any moment, keepalive."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import httpx
import pytest
import redis

from taskstream.keys import Keys
from tests.harness import TERMINAL, assert_contiguous, poll_until_done, read_stream, submit


def test_first_event_is_the_current_snapshot(service):
    snap = submit(service.url, "add", x=1, y=1)
    done = poll_until_done(service.url, snap["id"])
    events = read_stream(service.url, snap["id"])
    assert events == [(done["seq"], done)]


@pytest.mark.parametrize("how", ["header", "query"])
def test_drop_and_resume_exactly_after_the_last_id(service, how):
    snap = submit(service.url, "sleep", seconds=1.0, steps=10)
    first = read_stream(service.url, snap["id"], query="?last_event_id=0", max_events=5)
    assert_contiguous([i for i, _ in first], first=1)
    last = first[-1][0]
    if how == "header":
        rest = read_stream(service.url, snap["id"], headers={"Last-Event-ID": str(last)})
    else:
        rest = read_stream(service.url, snap["id"], query=f"?last_event_id={last}")
    ids = [i for i, _ in first + rest]
    assert_contiguous(ids, first=1)
    assert rest[-1][1]["state"] == "SUCCESS"


def test_header_wins_over_the_query_on_reconnection(service):
    # A browser keeps the first URL's ?last_event_id= and adds the header when it reconnects.
    snap = submit(service.url, "sleep", seconds=0.4, steps=4)
    poll_until_done(service.url, snap["id"])
    events = read_stream(
        service.url, snap["id"], headers={"Last-Event-ID": "5"}, query="?last_event_id=0"
    )
    assert [i for i, _ in events] == list(range(6, events[-1][0] + 1))


@pytest.mark.parametrize("how", ["header", "query"])
def test_reconnection_after_the_end_gets_204(service, how):
    snap = submit(service.url, "add", x=1, y=2)
    done = poll_until_done(service.url, snap["id"])
    if how == "header":
        response = httpx.get(
            f"{service.url}/tasks/{snap['id']}/events",
            headers={"Last-Event-ID": str(done["seq"])},
        )
    else:
        response = httpx.get(f"{service.url}/tasks/{snap['id']}/events?last_event_id={done['seq']}")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers


def test_resume_from_zero_replays_everything_retained(service):
    snap = submit(service.url, "sleep", seconds=0.2, steps=4)
    done = poll_until_done(service.url, snap["id"])
    events = read_stream(service.url, snap["id"], query="?last_event_id=0")
    assert [i for i, _ in events] == list(range(1, done["seq"] + 1))


def test_many_clients_joining_at_random_moments_each_see_contiguous_ids(service):
    snap = submit(service.url, "sleep", seconds=2.5, steps=50)
    results: dict[int, list[int]] = {}
    finals: dict[int, str] = {}
    errors: list[BaseException] = []
    rng = random.Random(7)

    def watch(n: int, delay: float) -> None:
        try:
            time.sleep(delay)
            events = read_stream(service.url, snap["id"])
            results[n] = [i for i, _ in events]
            finals[n] = events[-1][1]["state"]
            assert sum(s["state"] in TERMINAL for _, s in events) == 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=watch, args=(n, rng.uniform(0, 2.4))) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    done = poll_until_done(service.url, snap["id"])
    assert len(results) == 40
    for ids in results.values():
        assert_contiguous(ids)
        assert ids[-1] == done["seq"]
    assert set(finals.values()) == {"SUCCESS"}
    # They really joined at different moments, not all at the start or the end.
    assert len({ids[0] for ids in results.values()}) > 5


def test_a_slow_reader_still_gets_every_change_in_order(service):
    snap = submit(service.url, "sleep", seconds=0.5, steps=200)
    ids: list[int] = []
    with httpx.stream("GET", f"{service.url}/tasks/{snap['id']}/events?last_event_id=0") as r:
        time.sleep(1.5)  # let the task finish while this client reads nothing
        buffer = b""
        for chunk in r.iter_bytes():
            buffer += chunk
    for block in buffer.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("id: "):
                ids.append(int(line[4:]))
    assert_contiguous(ids, first=1)
    assert ids[-1] == poll_until_done(service.url, snap["id"])["seq"]


def test_keepalive_comments_while_nothing_changes(make_service):
    svc = make_service(KEEPALIVE_SECONDS="0.3")
    svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=1.5, steps=1)
    with socket.create_connection(("127.0.0.1", svc.ports[0])) as sock:
        sock.sendall(f"GET /tasks/{snap['id']}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        sock.settimeout(10)
        data = b""
        while b'"state":"SUCCESS"' not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b": keepalive\n\n") >= 2


def test_no_response_timeout_cuts_a_stream(make_service):
    # Ordinary responses are cut after RESPONSE_TIMEOUT_SECONDS; a stream must outlive it.
    svc = make_service(RESPONSE_TIMEOUT_SECONDS="1")
    svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=3, steps=3)
    events = read_stream(svc.url, snap["id"], query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert events[-1][1]["state"] == "SUCCESS"


def test_global_stream_resumes_after_an_id_and_starts_now_for_an_id_from_the_future(service):
    from httpx_sse import connect_sse

    def first_event(query: str, task_id: str) -> int:
        with (
            httpx.Client(timeout=30) as client,
            connect_sse(client, "GET", f"{service.url}/events{query}") as source,
        ):
            for sse in source.iter_sse():
                if sse.event == "message" and sse.data and json.loads(sse.data)["id"] == task_id:
                    return int(sse.id)
        raise AssertionError("stream ended")

    snap = submit(service.url, "add", x=1, y=1)
    poll_until_done(service.url, snap["id"])
    # Replay from 0 reaches this task's first change; an impossible id starts from now.
    replayed = first_event("?last_event_id=0", snap["id"])
    later = submit(service.url, "sleep", seconds=0.5, steps=1)
    live = first_event("?last_event_id=999999999999", later["id"])
    assert live > replayed


def test_head_on_a_stream_answers_its_headers_and_frees_the_connection(service):
    task = submit(service.url, "sleep", seconds=3, steps=3)
    # One connection, kept alive: a HEAD that ran the whole stream would hold it (and a stream
    # slot and a subscription) until the task ended, or for ever on GET /events.
    with httpx.Client(base_url=service.url, timeout=2, limits=httpx.Limits(max_connections=1)) as c:
        for path in (f"/tasks/{task['id']}/events", "/events"):
            answer = c.head(path)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "text/event-stream"
            assert c.get("/healthz").status_code == 200
        assert c.head("/tasks/no-such-task/events").status_code == 404
    # Nor did it subscribe to anything on the way: a HEAD needs no changes (and a channel
    # subscribed for it would linger seconds on every web process a prober reaches).
    keys = Keys(service.prefix)
    with redis.Redis.from_url(service.redis_url) as client:
        channels = [keys.task_channel(task["id"]), keys.task_channel("no-such-task")]
        assert [n for _, n in client.pubsub_numsub(*channels)] == [0, 0]
