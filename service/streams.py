"""The event streams: what one SSE response sends, from its first byte to its end.

Both streams follow one rule: the hub subscription is made before the record is read, and every
change is sent only if its id is the next one after the last id sent. Whatever arrives with an
id already sent is dropped; whatever arrives after a gap (or a RESYNC from the hub) is fetched
from the stored log instead. So a client sees a contiguous run of ids, none repeated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import RedisError

from taskstream.record import AsyncRecorder
from taskstream.states import TERMINAL
from taskstream.web import sse
from taskstream.web.hub import CLOSE, Announcement, Subscription
from taskstream.web.snapshots import linked

# How many changes one read of the global log fetches while catching up.
_GLOBAL_BATCH = 1_000

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _patiently(read: Callable[..., Awaitable[T]], *args: object) -> T:
    """Read the record, waiting out a Redis outage: the client stays connected meanwhile, and
    gets what it missed once Redis answers again."""
    delay = 0.05
    while True:
        try:
            return await read(*args)
        except RedisError as exc:
            log.warning("stream waiting for Redis (%s)", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class StreamBody:
    """A stream response's body: `cleanup` runs exactly once, however the response ends.

    That is when the stream finishes, when the client goes away, and even when the response is
    abandoned before its first byte (the server never iterates it, so a generator's `finally`
    would never run): then the garbage collector's finalizer does it.
    """

    __slots__ = ("__weakref__", "_finalizer", "_iterator")

    def __init__(self, iterator: AsyncIterator[bytes], cleanup: Callable[[], None]):
        self._iterator = iterator
        self._finalizer = weakref.finalize(self, cleanup)

    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        try:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        finally:
            self._finalizer()

    def release(self) -> None:
        """Run the cleanup now if it has not run (when the request has ended, read or not)."""
        self._finalizer()


@dataclass(frozen=True)
class StreamOptions:
    keepalive_seconds: float
    retry_ms: int
    # The root path the stream was requested under, for the snapshots' links.
    root: str = ""


def _seq_and_state(data: str) -> tuple[int, str]:
    snapshot = json.loads(data)
    return snapshot["seq"], snapshot["state"]


def _is_terminal(data: str) -> bool:
    return json.loads(data)["state"] in TERMINAL


async def task_stream(
    sub: Subscription,
    record: AsyncRecorder,
    task_id: str,
    current: str,
    after: int | None,
    options: StreamOptions,
    transport: asyncio.WriteTransport | None = None,
) -> AsyncIterator[bytes]:
    """One task's changes after `after` (or from the current snapshot), until its terminal one.

    `sub` must have been subscribed, and `current` read, before this is called. Given the
    `transport` of the response's connection, the hub writes changes there itself while the
    stream waits for them.
    """
    yield sse.retry(options.retry_ms)
    seq, state = _seq_and_state(current)
    root = options.root
    if after is None or after > seq:
        yield sse.event(seq, linked(current, task_id, root))
        if state in TERMINAL:
            return
        sent = seq
    else:
        caught = await _patiently(_catch_up, record, task_id, after, after == 0, root)
        for frame in caught.frames:
            yield frame
        if caught.done:
            return
        sent = caught.sent
        del caught
    # A stream may stay open for hours: its frame keeps no snapshot it has already sent
    # (about 2.5 KB a stream with the parsed dict).
    del current
    if transport is not None:
        sub.write_directly(transport, root)
    # The highest seq heard from the hub (they come in order), and whether a change already sent
    # was checked since the last catch-up: see _history_went_back.
    heard = 0
    checked = False
    while True:
        # While the stream waits, the hub may write the next changes to the client itself.
        sub.sent = sent
        item = await sub.next(options.keepalive_seconds)
        if sub.sent != sent:
            sent = heard = sub.sent
        if item is None:
            yield sse.KEEPALIVE
            continue
        if item is CLOSE:
            return
        if not isinstance(item, Announcement) or item.seq > sent + 1:
            caught = await _patiently(_catch_up, record, task_id, sent, False, root)
            for frame in caught.frames:
                yield frame
            sent = caught.sent
            if caught.done:
                return
            checked = False
            continue
        assert isinstance(item, Announcement)
        if item.seq <= sent:
            if item.seq <= heard or not checked:
                checked = True
                if await _patiently(_history_went_back, record, task_id, sent):
                    return
            heard = max(heard, item.seq)
            continue
        heard = item.seq
        yield item.frame(root=root)
        sent = item.seq
        if item.terminal:
            return


async def _history_went_back(record: AsyncRecorder, task_id: str, sent: int) -> bool:
    """Whether the task's record is gone or behind what the stream sent: Redis lost its data
    (FLUSHALL keeps the hub's connection, so no resync says so) and the task's seqs started
    again. A change the stream already sent comes again from the hub only when it was announced
    while the stream read the record, and the first of those is checked here; so is one that is
    not higher than the last heard, which a lost history's first changes are."""
    current = await record.get(task_id)
    return current is None or _seq_and_state(current)[0] < sent


@dataclass
class _CatchUp:
    frames: list[bytes]
    sent: int
    done: bool


async def _catch_up(
    record: AsyncRecorder, task_id: str, sent: int, allow_gap: bool, root: str
) -> _CatchUp:
    """The stored changes after `sent`, or the current snapshot where those are not retained."""
    changes = await record.changes_after(task_id, sent)
    if changes and changes[0][0] != sent + 1 and not allow_gap:
        current = await record.get(task_id)
        if current is None:
            return _CatchUp([], sent, True)
        seq = json.loads(current)["seq"]
        changes = [(seq, current)] if seq > sent else []
    frames = [sse.event(seq, linked(data, task_id, root)) for seq, data in changes]
    if not changes:
        # Nothing new, or the task is gone (expired, or Redis lost its data): then end, and a
        # reconnecting client learns which from the 404.
        return _CatchUp(frames, sent, await record.get(task_id) is None)
    last_seq, last_data = changes[-1]
    return _CatchUp(frames, last_seq, _is_terminal(last_data))


async def history_epoch(record: AsyncRecorder) -> str:
    """The name of the current history of global seqs, made by whoever asks first.

    It lives in Redis next to the global log and is lost with it: when Redis loses its data, the
    global seqs start again from 1 under a new epoch, and a client that kept the old one knows
    that its last id means nothing any more.
    """
    key = record.keys.epoch
    async with record.client.pipeline(transaction=True) as pipe:
        pipe.setnx(key, uuid.uuid4().hex)
        pipe.get(key)
        _, epoch = await pipe.execute()
    return epoch


def _epoch_event(epoch: str) -> bytes:
    return sse.named("epoch", json.dumps({"epoch": epoch}))


async def global_stream(
    sub: Subscription,
    record: AsyncRecorder,
    after: int,
    options: StreamOptions,
    visible: Callable[[str], bool] = lambda owner: True,
    epoch: str = "",
) -> AsyncIterator[bytes]:
    """Every change of every task the caller may see, after global sequence `after`, forever.

    The stream announces its history's epoch first (an `epoch` event). If Redis loses its data
    while the stream is open, it announces the new epoch and goes on from the new history's
    first change, so the ids restart visibly rather than silently skipping what is new.
    """
    yield sse.retry(options.retry_ms)
    yield _epoch_event(epoch)
    seen = after
    # The highest global seq heard from the hub: they arrive in increasing order, so one that
    # is not higher means the history started again (FLUSHALL keeps every connection open).
    heard = 0
    while True:
        # Catch up from the stored global log, then follow the hub.
        while True:
            batch = await _patiently(record.global_changes_after, seen, _GLOBAL_BATCH)
            for g, data, owner, task_id in batch:
                if visible(owner):
                    yield sse.event(g, linked(data, task_id, options.root))
                seen = g
            if len(batch) < _GLOBAL_BATCH:
                break
        # Changes announced while the log was read come again from the hub, already sent. The
        # first of them is checked against the epoch: a new history's first change looks the same.
        checked = False
        while True:
            item = await sub.next(options.keepalive_seconds)
            if item is None:
                yield sse.KEEPALIVE
                continue
            if item is CLOSE:
                return
            suspect = (
                isinstance(item, Announcement)
                and item.global_seq <= seen
                and (item.global_seq <= heard or not checked)
            )
            if not isinstance(item, Announcement) or item.global_seq > seen + 1 or suspect:
                # Redis was away, this stream fell behind, or the seqs went back: was the
                # history lost meanwhile?
                now = await _patiently(history_epoch, record)
                checked = True
                if now != epoch:
                    epoch, seen, heard = now, 0, 0
                    yield _epoch_event(epoch)
                    break
                if not suspect:
                    break
            assert isinstance(item, Announcement)
            heard = max(heard, item.global_seq)
            if item.global_seq <= seen:
                continue
            if visible(item.owner):
                yield item.frame(by_global_seq=True, root=options.root)
            seen = item.global_seq
