"""The subscriber hub: one Redis pub/sub connection per web process, fanned out to every stream.

Streams register here (in memory) before they read the record, and the hub has been subscribed to
the change channel since the process started, so any change stored after a stream's read reaches
that stream. When the subscription is lost, announcements may have been missed: on every
(re)subscription the hub tells each stream to re-read the record from where it stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Any, Final

from taskstream.record import Header, split_announcement
from taskstream.states import TERMINAL
from taskstream.web import sse
from taskstream.web.snapshots import linked

log = logging.getLogger(__name__)


class Announcement:
    """A change as it arrives on pub/sub: parsed once per web process, shared by every stream."""

    __slots__ = ("_frames", "data", "global_seq", "owner", "seq", "state", "task_id")

    def __init__(self, global_seq: int, seq: int, task_id: str, state: str, owner: str, data: str):
        self.global_seq = global_seq
        self.seq = seq
        self.task_id = task_id
        self.state = state
        self.owner = owner
        self.data = data
        self._frames: dict[tuple[bool, str], bytes] = {}

    @classmethod
    def parse(cls, message: str) -> Announcement:
        header, data = split_announcement(message)
        return cls.from_header(header, data)

    @classmethod
    def from_header(cls, h: Header, data: str) -> Announcement:
        return cls(h.global_seq, h.seq, h.task_id, h.state, h.owner, data)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def frame(self, by_global_seq: bool = False, root: str = "") -> bytes:
        """The SSE event, encoded once however many streams send it."""
        key = (by_global_seq, root)
        cached = self._frames.get(key)
        if cached is None:
            event_id = self.global_seq if by_global_seq else self.seq
            cached = self._frames[key] = sse.event(event_id, linked(self.data, self.task_id, root))
        return cached


class _Resync:
    """Marker: read the record again, announcements may have been missed."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()


class _Close:
    """Marker: the process is shutting down; end the stream (clients resume elsewhere)."""

    def __repr__(self) -> str:
        return "CLOSE"


CLOSE: Final = _Close()


class Subscription:
    """One stream's inbox: a bounded buffer of announcements.

    A stream that cannot keep up does not make the buffer grow: when it is full, the buffer is
    emptied and the stream is told to resync, which it does from the stored log. The stream then
    still sees every change, in order, and memory stays bounded whatever the client's speed.
    """

    __slots__ = ("_closed", "_items", "_limit", "_resync", "_waiter", "task_id")

    def __init__(self, task_id: str | None, limit: int):
        self.task_id = task_id
        self._items: deque[Announcement] = deque()
        self._limit = limit
        self._resync = False
        # The one reader's wake-up while it waits. A bare future rather than an asyncio.Event,
        # whose deque of waiters costs ~700 bytes per stream and a loop over it per change.
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push(self, item: Announcement) -> bool:
        """Queue an announcement; False when the buffer overflowed into a resync."""
        overflowed = len(self._items) >= self._limit
        if overflowed:
            self._items.clear()
            self._resync = True
        else:
            self._items.append(item)
        self._wake()
        return not overflowed

    def resync(self) -> None:
        self._items.clear()
        self._resync = True
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    async def next(self, wait: float) -> Announcement | _Resync | _Close | None:
        """The next announcement, RESYNC, CLOSE, or None when `wait` seconds passed with nothing."""
        if self._closed:
            return CLOSE
        if not self._items and not self._resync:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(wait):
                    await waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        if self._closed:
            return CLOSE
        if self._resync:
            self._resync = False
            return RESYNC
        return self._items.popleft()


class Hub:
    def __init__(
        self,
        client: Any,
        channel: str,
        buffer: int,
        *,
        idle_ping_seconds: float = 5.0,
        ping_timeout_seconds: float = 3.0,
    ):
        self._client = client
        self._channel = channel
        self._buffer = buffer
        self._idle_ping = idle_ping_seconds
        self._ping_timeout = ping_timeout_seconds
        self._by_task: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._runner: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        self.closing = False
        # Counters for /metrics.
        self.reconnects = 0
        self.delivered = 0
        self.overflows = 0
        self.by_state: Counter[str] = Counter()

    @property
    def live(self) -> bool:
        return self._live.is_set()

    @property
    def global_streams(self) -> int:
        return len(self._all)

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._by_task.values()) + len(self._all)

    def subscribe(self, task_id: str | None) -> Subscription:
        """Register a stream for one task's changes, or for every change with task_id=None."""
        sub = Subscription(task_id, self._buffer)
        if self.closing:
            sub.close()
        if task_id is None:
            self._all.add(sub)
        else:
            self._by_task.setdefault(task_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.task_id is None:
            self._all.discard(sub)
            return
        subs = self._by_task.get(sub.task_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_task[sub.task_id]

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="hub")

    async def wait_live(self, wait: float) -> bool:
        try:
            async with asyncio.timeout(wait):
                await self._live.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None

    def _dispatch(self, message: str) -> None:
        item = Announcement.parse(message)
        self.by_state[item.state] += 1
        for group in (self._by_task.get(item.task_id, ()), self._all):
            for sub in group:
                if sub.push(item):
                    self.delivered += 1
                else:
                    self.overflows += 1

    def close_streams(self) -> None:
        """End every open stream and refuse new ones: the process is shutting down."""
        self.closing = True
        for subs in self._by_task.values():
            for sub in subs:
                sub.close()
        for sub in self._all:
            sub.close()

    def _resync_all(self) -> None:
        for subs in self._by_task.values():
            for sub in subs:
                sub.resync()
        for sub in self._all:
            sub.resync()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change subscription lost (%s); reconnecting", type(exc).__name__)
            finally:
                self._live.clear()
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            self.reconnects += 1

    async def _listen(self, pubsub: Any) -> None:
        await pubsub.subscribe(self._channel)
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is None:
                # A half-open connection reads as silence: ping it, and give up on it when the
                # answer does not come.
                if ping_sent is not None and now - ping_sent > self._ping_timeout:
                    raise ConnectionError("no answer to ping on the change subscription")
                if ping_sent is None and now - last_heard > self._idle_ping:
                    await pubsub.ping()
                    ping_sent = now
                continue
            last_heard = now
            ping_sent = None
            kind = message["type"]
            if kind == "message":
                self._dispatch(message["data"])
            elif kind == "subscribe":
                # Subscribed (again): anything announced while we were not may be missing from
                # every open stream, so each one re-reads the record.
                self._live.set()
                self._resync_all()
                log.info("change subscription live on %s", self._channel)
