"""Follow one task to its end: stream, resume after drops, poll when streaming keeps failing.

One follower for every caller (`Client.follow`, `AsyncClient.follow`, taskctl, the soak test,
the fault tests). Its decisions live in `Plan`, which does no I/O: it yields steps (open a
stream, read an event, poll, sleep, emit a snapshot) and is sent their results, so the same
plan drives a sync and an async client, and tests drive it with a fake clock and no socket.

Every snapshot passes through one gate, `Plan._offer`, which lets a snapshot through only when
its seq is newer than the last one emitted. Streams resume with `Last-Event-ID` set to that seq,
so after a reconnection the service replays exactly the changes missed and the gate drops
anything repeated. While polling (when streams keep failing), each poll shows the task as it
stands: changes made between two polls are not seen one by one (`skipped` counts them), but the
snapshot is whole (state, progress, result), and the stream is tried again every
`stream_retry_interval`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from httpx_sse import SSEError

from taskstream.client.errors import ProblemError, Unreachable, describe

TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

Snapshot = dict[str, Any]

log = logging.getLogger("taskstream.client")


@dataclass(frozen=True)
class FollowOptions:
    # How long the service may stay unreachable (or failing) before giving up with Unreachable.
    patience: float = 60.0
    # Stream attempts in a row that fail before falling back to polling, which shows only what
    # each poll finds: five wait ~4 s in all (0.25, 0.5, 1, 2 s), as long as a web process takes
    # to restart, where three gave up within a second.
    stream_attempts: int = 5
    poll_interval: float = 0.5
    # While polling, how often to try the stream again: it is cheaper and misses nothing.
    stream_retry_interval: float = 10.0
    # The first reconnection delay; it doubles on each failure up to the server's `retry:`.
    backoff: float = 0.25


@dataclass
class FollowStats:
    """What happened on the way, for callers that check the service's guarantees."""

    # Streams opened again after one broke (each resumed with Last-Event-ID).
    reconnects: int = 0
    # Stream events dropped because their seq had been emitted already (the service promises
    # none: a resumed stream starts after Last-Event-ID).
    repeated: int = 0
    # Changes never emitted: seqs jumped over (by polling, or a stream past the retained log).
    skipped: int = 0
    # Polls made while streaming was failing.
    polls: int = 0
    # Times the service was found to have lost the task's history (Redis lost its data, and a
    # worker recorded the task again from seq 1): its seq went back.
    resets: int = 0


# --- the steps the plan asks for, and what each is answered with -------------------------------


@dataclass(frozen=True)
class Open:
    """Open the event stream with `Last-Event-ID: last_event_id` (None: no header, the stream
    starts at the current snapshot). Answer: the status (200 or 204); raises ProblemError for an
    error status, httpx's errors for no answer."""

    last_event_id: int | None


@dataclass(frozen=True)
class Read:
    """The next event of the open stream (httpx_sse's ServerSentEvent), or None at its end."""


@dataclass(frozen=True)
class Close:
    """Close the open stream, if any."""


@dataclass(frozen=True)
class Fetch:
    """GET the snapshot with If-None-Match `etag`. Answer: (snapshot or None if unchanged,
    etag); raises ProblemError or Unreachable."""

    etag: str | None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notice:
    """Something a person watching would want to know (a drop, a fallback to polling)."""

    text: str


@dataclass(frozen=True)
class Emit:
    """Hand this snapshot to the caller."""

    snapshot: Snapshot


Step = Open | Read | Close | Fetch | Sleep | Notice | Emit


class _StreamFailed(Exception):
    """One stream attempt ended before the task did."""


@dataclass
class Plan:
    """The decisions of following one task, without I/O. `steps()` is the generator."""

    options: FollowOptions
    # None: from the task's current snapshot; 0: from its first retained change; n: after seq n.
    after: int | None
    clock: Callable[[], float]
    stats: FollowStats = field(default_factory=FollowStats)
    # The terminal snapshot, once seen (also when it was not emitted: a caller that started
    # after it, `after` >= its seq, gets nothing emitted but can read it here).
    final: Snapshot | None = None
    # The seq of the last snapshot emitted (or `after`): what a resumed stream starts after.
    last_seq: int = field(init=False)
    _retry_cap: float = 2.0  # seconds, until the stream's `retry:` field says otherwise
    _last_answer: float = 0.0
    _progressed: bool = False
    _connected: bool = False

    def __post_init__(self) -> None:
        self.last_seq = self.after or 0

    def steps(self) -> Generator[Step, Any, None]:
        """Until the task ends. Raises ProblemError for a 4xx (an unknown id, say) at once, and
        Unreachable once the service has been lost for longer than `patience`."""
        o = self.options
        self._last_answer = self.clock()
        failures = 0
        while True:
            self._progressed = False
            try:
                if (yield from self._stream()):
                    return
                reason = "the stream ended before the task did"
            except ProblemError as exc:
                if exc.client_error:
                    raise
                reason = str(exc)
            except _StreamFailed as exc:
                reason = str(exc)
            yield Close()
            failures = 0 if self._progressed else failures + 1
            self._check_patience(reason)
            if failures >= o.stream_attempts:
                yield Notice(f"streaming keeps failing ({reason}); polling instead")
                if (yield from self._poll(o.stream_retry_interval)):
                    return
                # One more stream attempt, then back to polling if that fails too.
                failures = o.stream_attempts - 1
                continue
            if self._connected:
                yield Notice(f"connection lost ({reason}); resuming after seq {self.last_seq}")
            else:
                yield Notice(f"cannot stream ({reason}); trying again")
            self.stats.reconnects += 1
            if failures:
                yield Sleep(min(self._retry_cap, o.backoff * 2 ** (failures - 1)))

    def _check_patience(self, reason: str) -> None:
        if self.clock() - self._last_answer > self.options.patience:
            raise Unreachable(
                f"gave up after {self.options.patience:g}s without the service: {reason}"
            )

    def _offer(self, snap: Any, streamed: bool, fresh: bool = True) -> Generator[Step, Any, bool]:
        """Emit `snap` if it is new; True once the task has ended. `fresh`: the task as the service
        has it now (a read, or a resumed stream's first event), which can show a lost history."""
        seq, state = int(snap["seq"]), str(snap["state"])
        if fresh and seq < self.last_seq:
            # A task's seq never goes back: the service lost what was shown (the last seq shown
            # belongs to a history that is gone). Show the task as it now is.
            yield Notice(
                f"the service lost this task's history (seq {self.last_seq}, now {seq}); "
                "showing the task as it now is"
            )
            self.stats.resets += 1
            self.last_seq = seq - 1
        if seq > self.last_seq:
            if self.last_seq or self.after is not None:
                self.stats.skipped += seq - self.last_seq - 1
            self.last_seq = seq
            self._progressed = True
            yield Emit(snap)
        elif streamed:
            self.stats.repeated += 1
        if state in TERMINAL:
            self.final = snap
            return True
        return False

    def _stream(self) -> Generator[Step, Any, bool]:
        """One stream attempt: True if the task ended, False if the stream ended first."""
        connected = False
        try:
            resume = self.last_seq or self.after is not None
            status = yield Open(self.last_seq if resume else None)
            connected = self._connected = True
            if status == 204:
                # The service says we have seen the end already; take it from a fresh read.
                snap, _ = yield Fetch(None)
                return (yield from self._offer(snap, streamed=False))
            if status != 200:
                raise _StreamFailed(f"unexpected answer {status}")
            first = True
            while (event := (yield Read())) is not None:
                if event.retry is not None:
                    self._retry_cap = max(event.retry / 1000, self.options.backoff)
                if not event.data:
                    continue
                if (yield from self._offer(json.loads(event.data), streamed=True, fresh=first)):
                    return True
                first = False
            return False
        except Unreachable as exc:
            raise _StreamFailed(str(exc)) from None
        except (httpx.HTTPError, httpx.StreamError, SSEError) as exc:
            raise _StreamFailed(describe(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:
            # Not a snapshot: something other than the service answered; treat it as a failure.
            raise _StreamFailed(f"unreadable event ({describe(exc)})") from None
        finally:
            # A stream that was open was an answer until now, however quiet the task was (its
            # keepalives never reach this code), so patience counts from here.
            if connected:
                self._last_answer = self.clock()

    def _poll(self, duration: float) -> Generator[Step, Any, bool]:
        """Poll for `duration` seconds; True if the task ends meanwhile."""
        deadline = self.clock() + duration
        etag: str | None = None
        while True:
            try:
                self.stats.polls += 1
                snap, etag = yield Fetch(etag)
                self._last_answer = self.clock()
                if snap is not None and (yield from self._offer(snap, streamed=False)):
                    return True
            except ProblemError as exc:
                if exc.client_error:
                    raise
                self._check_patience(str(exc))
            except Unreachable as exc:
                self._check_patience(str(exc))
            if self.clock() >= deadline:
                return False
            yield Sleep(self.options.poll_interval)


# --- the drivers: the plan's steps done with a sync or an async client ------------------------


class SyncIO(Protocol):
    on_notice: Callable[[str], None] | None

    def open(self, last_event_id: int | None) -> int: ...
    def read(self) -> Any: ...
    def close(self) -> None: ...
    def fetch(self, etag: str | None) -> tuple[Snapshot | None, str | None]: ...
    def sleep(self, seconds: float) -> None: ...


class AsyncIO(Protocol):
    on_notice: Callable[[str], None] | None

    async def open(self, last_event_id: int | None) -> int: ...
    async def read(self) -> Any: ...
    async def close(self) -> None: ...
    async def fetch(self, etag: str | None) -> tuple[Snapshot | None, str | None]: ...
    async def sleep(self, seconds: float) -> None: ...


def _notice(io: SyncIO | AsyncIO, text: str) -> None:
    (io.on_notice or log.info)(text)


def _advance(
    steps: Generator[Step, Any, None], result: Any, error: Exception | None
) -> Step | None:
    """The plan's next step after `result` (or `error`); None when it has finished."""
    try:
        return steps.throw(error) if error is not None else steps.send(result)
    except StopIteration:
        return None


class _Following:
    """Where a follower stands, read off its plan (the same for the sync and async drivers)."""

    plan: Plan

    @property
    def last_seq(self) -> int:
        return self.plan.last_seq

    @property
    def final(self) -> Snapshot | None:
        return self.plan.final

    @property
    def stats(self) -> FollowStats:
        return self.plan.stats


class Follow(_Following, Iterator[Snapshot]):
    """Snapshots of one task, each change once and in order, ending after the terminal one.

    Resumes by itself with Last-Event-ID when a stream breaks, falls back to polling when
    streaming keeps failing, raises ProblemError (a 4xx, e.g. an unknown id) or Unreachable (no
    service for longer than `patience`). `last_seq`, `final` and `stats` say where it stands;
    `close()` (or leaving a `with` block) ends it early.
    """

    def __init__(self, plan: Plan, io: SyncIO):
        self.plan = plan
        self._snapshots = self._run(io)

    def _run(self, io: SyncIO) -> Iterator[Snapshot]:
        steps = self.plan.steps()
        step: Step | None = next(steps)
        try:
            while step is not None:
                result: Any = None
                error: Exception | None = None
                try:
                    match step:
                        case Emit(snapshot):
                            yield snapshot
                        case Open(last_event_id):
                            result = io.open(last_event_id)
                        case Read():
                            result = io.read()
                        case Close():
                            io.close()
                        case Fetch(etag):
                            result = io.fetch(etag)
                        case Sleep(seconds):
                            io.sleep(seconds)
                        case Notice(text):
                            _notice(io, text)
                except Exception as exc:
                    error = exc
                step = _advance(steps, result, error)
        finally:
            steps.close()
            io.close()

    def __next__(self) -> Snapshot:
        return next(self._snapshots)

    def close(self) -> None:
        self._snapshots.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncFollow(_Following, AsyncIterator[Snapshot]):
    """`Follow` for asyncio: `async for snap in client.follow(task_id)`."""

    def __init__(self, plan: Plan, io: AsyncIO):
        self.plan = plan
        self._snapshots = self._run(io)

    async def _run(self, io: AsyncIO) -> AsyncIterator[Snapshot]:
        steps = self.plan.steps()
        step: Step | None = next(steps)
        try:
            while step is not None:
                result: Any = None
                error: Exception | None = None
                try:
                    match step:
                        case Emit(snapshot):
                            yield snapshot
                        case Open(last_event_id):
                            result = await io.open(last_event_id)
                        case Read():
                            result = await io.read()
                        case Close():
                            await io.close()
                        case Fetch(etag):
                            result = await io.fetch(etag)
                        case Sleep(seconds):
                            await io.sleep(seconds)
                        case Notice(text):
                            _notice(io, text)
                except Exception as exc:
                    error = exc
                step = _advance(steps, result, error)
        finally:
            steps.close()
            await io.close()

    async def __anext__(self) -> Snapshot:
        return await self._snapshots.__anext__()

    async def aclose(self) -> None:
        await self._snapshots.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncFollow:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
