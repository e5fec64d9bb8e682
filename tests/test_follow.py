"""The client's follower, in-process and fast: a scripted service behind httpx's MockTransport
(no socket), a fake clock, and waits that advance it instead of sleeping. Each case runs with
the sync `Client` and the async `AsyncClient`, which share one plan.

Following across a real web restart is in test_client_service.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from taskstream.client import (
    AsyncClient,
    Client,
    FollowOptions,
    FollowStats,
    ProblemError,
    Unreachable,
)

TASK = "t-1"
STATES = ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]


def snapshot(seq: int) -> dict[str, Any]:
    return {"id": TASK, "task": "sleep", "state": STATES[seq - 1], "seq": seq}


LAST = len(STATES)
PROBLEM = {"Content-Type": "application/problem+json"}


class Clock:
    """Time that passes only when the follower waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body of `chunks`, then a broken connection if `breaks`."""

    def __init__(self, chunks: list[bytes], breaks: bool):
        self.chunks, self.breaks = chunks, breaks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.breaks:
            raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.breaks:
            raise httpx.ReadError("connection reset by peer")

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Stream:
    """One scripted answer to a stream request: `count` events (None: to the end), then a
    break; or a status with a body instead."""

    count: int | None = None
    status: int = 200
    repeat_first: bool = False
    garbage: bool = False
    # The service lost the task's history and recorded it again: the stream starts at this seq,
    # whatever Last-Event-ID says (the task as it now is).
    lost_to: int | None = None


@dataclass
class FakeService:
    """The task's changes 1..LAST; a stream without Last-Event-ID starts at `now`."""

    streams: list[Stream]
    now: int = 1
    # How far the task moves between two polls.
    poll_step: int = 2
    connect_fails: bool = False
    last_event_ids: list[str | None] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    polls: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.connect_fails:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.endswith("/events"):
            return self._stream(request)
        self.polls += 1
        seq = self.now
        self.now = min(LAST, self.now + self.poll_step)
        etag = f'"{seq}"'
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(200, json=snapshot(seq), headers={"ETag": etag})

    def _stream(self, request: httpx.Request) -> httpx.Response:
        last = request.headers.get("Last-Event-ID")
        self.last_event_ids.append(last)
        script = self.streams.pop(0) if self.streams else Stream()
        if script.status == 404:
            problem = {"type": "/problems/task-not-found", "title": "Task not found",
                       "status": 404, "detail": f"No task {TASK!r}."}  # fmt: skip
            return httpx.Response(404, json=problem, headers=PROBLEM)
        if script.status != 200:
            return httpx.Response(script.status, text="no streams")
        start = int(last) + 1 if last else self.now
        if last and int(last) >= LAST:
            return httpx.Response(204)
        if script.repeat_first and last:
            start -= 1
        if script.lost_to is not None:
            start = script.lost_to
        end = LAST if script.count is None else min(LAST, start + script.count - 1)
        chunks = [b"retry: 2000\n\n"]
        for seq in range(start, end + 1):
            data = "<html>" if script.garbage else json.dumps(snapshot(seq))
            chunks.append(f"id: {seq}\ndata: {data}\n\n".encode())
        self.now = max(self.now, end)
        body = Body(chunks, breaks=end < LAST or script.garbage)
        self.bodies.append(body)
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=body)


OPTIONS = FollowOptions(patience=30, stream_attempts=3, poll_interval=0.5,
                        stream_retry_interval=2, backoff=0.25)  # fmt: skip


@dataclass
class Run:
    snapshots: list[dict[str, Any]]
    notices: list[str]
    stats: FollowStats
    final: dict[str, Any] | None


def run(kind: str, service: FakeService, clock: Clock, after: int | None = None) -> Run:
    """Follow TASK to its end with the sync or the async client."""
    notices: list[str] = []
    if kind == "sync":
        transport = httpx.MockTransport(service)
        with Client("http://svc/jobs", transport=transport, sleep=clock.sleep, clock=clock) as c:
            follow = c.follow(TASK, after=after, options=OPTIONS, on_notice=notices.append)
            snapshots = list(follow)
        return Run(snapshots, notices, follow.stats, follow.final)

    async def main() -> Run:
        transport = httpx.MockTransport(service)
        async with AsyncClient(
            "http://svc/jobs", transport=transport, sleep=clock.asleep, clock=clock
        ) as c:
            follow = c.follow(TASK, after=after, options=OPTIONS, on_notice=notices.append)
            snapshots = [snap async for snap in follow]
        return Run(snapshots, notices, follow.stats, follow.final)

    return asyncio.run(main())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


def seqs(result: Run) -> list[int]:
    return [s["seq"] for s in result.snapshots]


@KINDS
def test_an_unbroken_stream_ends_after_the_terminal_snapshot(kind):
    service = FakeService([Stream()], now=3)
    result = run(kind, service, Clock())
    assert seqs(result) == [3, 4, 5, 6, 7]
    assert result.final == snapshot(LAST)
    assert service.last_event_ids == [None]
    assert result.notices == [] and result.stats == FollowStats()
    assert all(body.closed for body in service.bodies)


@KINDS
def test_after_zero_starts_from_the_first_change(kind):
    service = FakeService([Stream()], now=4)
    result = run(kind, service, Clock(), after=0)
    assert seqs(result) == list(range(1, LAST + 1))
    assert service.last_event_ids == ["0"]


@KINDS
def test_drops_resume_with_last_event_id_without_repeats_or_gaps(kind):
    service = FakeService([Stream(count=2), Stream(count=3), Stream()])
    clock = Clock()
    result = run(kind, service, clock)
    assert seqs(result) == list(range(1, LAST + 1))
    assert service.last_event_ids == [None, "2", "5"]
    assert result.stats == FollowStats(reconnects=2)
    # Each broken stream had made progress: resumed at once, no wait.
    assert clock.sleeps == []
    assert "connection lost" in result.notices[0] and "after seq 2" in result.notices[0]


@KINDS
def test_a_repeated_change_is_dropped_and_counted(kind):
    service = FakeService([Stream(count=3), Stream(repeat_first=True)])
    result = run(kind, service, Clock())
    assert seqs(result) == list(range(1, LAST + 1))
    assert result.stats.repeated == 1


@KINDS
def test_a_lost_history_is_said_and_the_task_shown_as_it_now_is(kind):
    # Shown up to 5, then Redis lost its data and the task was recorded again: the resumed
    # stream starts at 3 (its current snapshot), not after 5.
    service = FakeService([Stream(count=5), Stream(lost_to=3)])
    result = run(kind, service, Clock())
    assert seqs(result) == [1, 2, 3, 4, 5, 3, 4, 5, 6, 7]
    assert result.final == snapshot(LAST)
    assert result.stats.resets == 1 and result.stats.repeated == 0
    assert any("lost this task's history" in n for n in result.notices)


@KINDS
def test_failures_back_off_then_fall_back_to_polling_then_stream_again(kind):
    # Three refused streams, polling for stream_retry_interval, then a stream that works.
    service = FakeService([Stream(status=503)] * 3 + [Stream()], poll_step=1)
    clock = Clock()
    result = run(kind, service, clock)
    assert seqs(result) == list(range(1, LAST + 1))
    assert result.final == snapshot(LAST)
    # Backoff doubles between failed attempts, then polls every poll_interval.
    assert clock.sleeps[:2] == [0.25, 0.5]
    assert set(clock.sleeps[2:]) == {0.5}
    assert any("polling instead" in n for n in result.notices)
    assert result.stats.polls == service.polls > 0
    # Five polls (2 s at 0.5 s) showed 1..5; streaming resumed after the last of them.
    assert service.polls == 5
    assert service.last_event_ids == [None, None, None, "5"]


@KINDS
def test_polling_shows_each_new_state_once_and_says_what_it_skipped(kind):
    service = FakeService([Stream(status=503)] * 100, poll_step=2)
    result = run(kind, service, Clock())
    assert seqs(result) == [1, 3, 5, 7]
    assert result.stats.skipped == 3


@KINDS
def test_an_unknown_task_raises_the_problem_at_once(kind):
    service = FakeService([Stream(status=404)])
    with pytest.raises(ProblemError) as raised:
        run(kind, service, Clock())
    problem = raised.value
    assert (problem.status, problem.type, problem.title) == (
        404, "/problems/task-not-found", "Task not found"
    )  # fmt: skip
    assert problem.detail == f"No task {TASK!r}."
    assert problem.client_error
    assert len(service.last_event_ids) == 1


@KINDS
def test_gives_up_once_the_service_is_gone_for_longer_than_patience(kind):
    service = FakeService([], connect_fails=True)
    clock = Clock()
    with pytest.raises(Unreachable, match="gave up after 30s"):
        run(kind, service, clock)
    assert 30 < clock.now - 1000 < 30 + OPTIONS.stream_retry_interval + 1


@KINDS
def test_having_seen_the_end_already_emits_nothing_more(kind):
    service = FakeService([Stream()], now=LAST)
    result = run(kind, service, Clock(), after=LAST)
    assert result.snapshots == []
    assert result.final == snapshot(LAST)
    assert service.last_event_ids == [str(LAST)]


@KINDS
def test_something_other_than_snapshots_counts_as_a_failed_stream(kind):
    service = FakeService([Stream(count=2), Stream(garbage=True), Stream()])
    clock = Clock()
    result = run(kind, service, clock)
    assert seqs(result) == list(range(1, LAST + 1))
    assert any("unreadable event" in n for n in result.notices)
    assert clock.sleeps == [0.25]  # the garbage stream made no progress: one backoff


def test_leaving_early_closes_the_stream():
    service = FakeService([Stream()])
    with Client("http://svc", transport=httpx.MockTransport(service)) as client:
        with client.follow(TASK) as follow:
            assert next(follow)["seq"] == 1
        assert service.bodies[0].closed


# --- the other calls --------------------------------------------------------------------------


def test_calls_and_their_problems():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            body = json.loads(request.content)
            if body["task"] == "nope":
                problem = {"type": "/problems/unknown-task", "title": "Unknown task",
                           "status": 404, "available": ["add"]}  # fmt: skip
                return httpx.Response(404, json=problem, headers=PROBLEM)
            return httpx.Response(202, json={**snapshot(1), "echo": body})
        if request.method == "DELETE":
            return httpx.Response(409, json={"title": "Task already finished", "status": 409,
                                             "state": "SUCCESS"})  # fmt: skip
        if request.url.path.endswith("/task-types"):
            return httpx.Response(200, json=[{"name": "add"}])
        if request.url.path.endswith("/tasks"):
            return httpx.Response(200, json={"items": [snapshot(1)], "next": "abc"})
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://svc/jobs/", "s3cret-token", transport=httpx.MockTransport(handler)) as c:
        # `task` is the task's name; a keyword argument of the task may be called `task` too.
        snap = c.submit("add", 1, 2, task="x")
        assert snap["echo"] == {"task": "add", "args": [1, 2], "kwargs": {"task": "x"}}
        assert seen[-1].url == "http://svc/jobs/tasks"
        assert seen[-1].headers["Authorization"] == "Bearer s3cret-token"

        page = c.list(state=["RECEIVED", "STARTED"], task="add", limit=5, cursor="c1")
        assert (page.items, page.next) == ([snapshot(1)], "abc")
        assert str(seen[-1].url) == (
            "http://svc/jobs/tasks?state=RECEIVED&state=STARTED&task=add&limit=5&cursor=c1"
        )
        assert c.task_types() == [{"name": "add"}]

        with pytest.raises(ProblemError) as unknown:
            c.submit("nope")
        assert unknown.value.problem["available"] == ["add"]
        assert str(unknown.value) == "404 Unknown task"
        with pytest.raises(ProblemError) as finished:
            c.cancel("a/b?c")
        assert seen[-1].url.raw_path == b"/jobs/tasks/a%2Fb%3Fc"
        assert finished.value.problem["state"] == "SUCCESS"
        with pytest.raises(ProblemError) as gateway:
            c.get("x")
        assert gateway.value.status == 502 and not gateway.value.client_error
        assert gateway.value.detail == "<html>bad gateway</html>"


def test_no_answer_at_all_is_unreachable():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client("http://svc", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(Unreachable, match="cannot reach http://svc"):
            client.get("x")

    async def main() -> None:
        async with AsyncClient("http://svc", transport=httpx.MockTransport(refuse)) as client:
            await client.task_types()

    with pytest.raises(Unreachable):
        asyncio.run(main())
