"""The subscriber hub: one Redis pub/sub connection per web process, fanned out to every stream.

A web process hears only what it serves: the record announces each change on the task's own
channel (and on a common channel for `GET /events`), and the hub is subscribed to a task's channel
exactly while this process has a stream of that task open (the common one, while it has a
`GET /events` open). `subscribe` returns only once Redis has confirmed the channel's SUBSCRIBE,
and streams read the record only after that, so any change stored after a stream's read reaches
that stream. When the connection is lost, announcements may have been missed: once each channel
is subscribed again, the hub tells its streams to re-read the record from where they stand.

The connection is read with a small RESP reader of its own rather than redis-py's PubSub, whose
per-message work (about 0.3 ms) was most of the web's CPU per change; redis-py still makes the
connection (address, Sentinel, TLS, password).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from enum import IntEnum
from typing import Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError

from taskstream import connections
from taskstream.keys import Keys
from taskstream.record import split_announcement
from taskstream.states import TERMINAL
from taskstream.web import direct, sse
from taskstream.web.snapshots import linked

# Looked up once: a fan-out calls it for each of thousands of streams.
_write = direct.write

log = logging.getLogger(__name__)


class Announcement:
    """A change as it arrives on pub/sub: parsed once per web process, shared by every stream."""

    __slots__ = (
        "_chunk",
        "_chunks",
        "_frame",
        "_frames",
        "data",
        "global_seq",
        "owner",
        "seq",
        "state",
        "task_id",
        "terminal",
    )

    def __init__(self, global_seq: int, seq: int, task_id: str, state: str, owner: str, data: str):
        self.global_seq = global_seq
        self.seq = seq
        self.task_id = task_id
        self.state = state
        self.terminal = state in TERMINAL
        self.owner = owner
        self.data = data
        # Made at the first encoding that is not a task stream's at the root: most changes are
        # encoded once, for one root path.
        self._frame: bytes | None = None
        self._chunk: bytes | None = None
        self._frames: dict[tuple[bool, str], bytes] | None = None
        self._chunks: dict[str, bytes] | None = None

    @classmethod
    def parse(cls, message: str) -> Announcement:
        """An announcement as the record script publishes it (taskstream.record's format)."""
        h, data = split_announcement(message)
        return cls(h.global_seq, h.seq, h.task_id, h.state, h.owner, data)

    def chunk(self, root: str = "") -> bytes:
        """The task stream's event as an HTTP/1.1 chunk, for direct writes; encoded once."""
        if not root:
            if self._chunk is None:
                self._chunk = direct.chunk(self.frame())
            return self._chunk
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = {}
        cached = chunks.get(root)
        if cached is None:
            cached = chunks[root] = direct.chunk(self.frame(root=root))
        return cached

    def frame(self, by_global_seq: bool = False, root: str = "") -> bytes:
        """The SSE event, encoded once however many streams send it."""
        if not by_global_seq and not root:
            if self._frame is None:
                self._frame = sse.event(self.seq, linked(self.data, self.task_id))
            return self._frame
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        key = (by_global_seq, root)
        cached = frames.get(key)
        if cached is None:
            event_id = self.global_seq if by_global_seq else self.seq
            cached = frames[key] = sse.event(event_id, linked(self.data, self.task_id, root))
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


_EXPIRED: Final = object()


class Handed(IntEnum):
    """What became of an announcement handed to a stream (Subscription.push)."""

    WRITTEN = 0  # straight to the client (see direct.py)
    ENDED = 1  # the task's last change, written: `close` the stream to end its response
    QUEUED = 2  # for the stream's task to send
    OVERFLOWED = 3  # the buffer was full: the stream will resync from the record


WRITTEN, ENDED, QUEUED, OVERFLOWED = Handed

# How much of one change's fan-out to many streams happens in one turn of the event loop (see
# Hub._dispatch): a woken stream costs its task about 25 µs of work later in the turn, a direct
# write about 5 µs now; so a slice is 4 woken streams, 32 written, or a mix.
_FAN_OUT_BUDGET: Final = 32
_WAKE_COST: Final = 8


class Subscription:
    """One stream's inbox: a bounded buffer of announcements.

    A stream that cannot keep up does not make the buffer grow: when it is full, the buffer is
    emptied and the stream is told to resync, which it does from the stored log. The stream then
    still sees every change, in order, and memory stays bounded whatever the client's speed.
    """

    __slots__ = (
        "_closed",
        "_due",
        "_items",
        "_limit",
        "_parked",
        "_resync",
        "_root",
        "_timer",
        "_transport",
        "_wait",
        "_waiter",
        "channel",
        "sent",
        "task_id",
    )

    def __init__(self, task_id: str | None, limit: int):
        self.task_id = task_id
        self.channel: _Channel | None = None
        # Made at the first change a stream has to queue: most are written directly instead
        # (an empty deque is ~760 bytes a stream).
        self._items: deque[Announcement] | None = None
        self._limit = limit
        self._resync = False
        # The one reader's wake-up while it waits. A bare future rather than an asyncio.Event,
        # whose deque of waiters costs ~700 bytes per stream and a loop over it per change.
        self._waiter: asyncio.Future[object] | None = None
        self._closed = False
        # The quiet-time timer: armed once and re-armed only when it fires, rather than armed
        # and cancelled at every change of every stream (a tenth of a change's fan-out).
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the current wait ends quietly (loop time)
        self._wait = 0.0  # how long the current wait may be quiet
        # A task stream's last seq sent to its client; and, for a stream on a connection of
        # our own, where the hub may write its changes directly (see direct.py).
        self.sent = 0
        self._transport: asyncio.WriteTransport | None = None
        self._root = ""
        # In next(), waiting, with no write of its own under way (the waiter not yet set).
        self._parked = False

    def _wake(self) -> None:
        self._parked = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write_directly(self, transport: asyncio.WriteTransport, root: str) -> None:
        """Let the hub write this task stream's next changes to its connection's `transport`
        while the stream waits for them; `sent` says where the stream stands, before and after
        each wait."""
        self._transport = transport
        self._root = root

    def push(self, item: Announcement) -> Handed:
        """Hand over an announcement, written to the client at once where it can be."""
        if (
            self._parked
            and item.seq == self.sent + 1
            and self._transport is not None
            and not self._items
            and not self._resync
            and _write(self._transport, item.chunk(self._root))
        ):
            # The wait was not quiet: the channel notes when it last wrote (_quiet_check).
            self.sent = item.seq
            return ENDED if item.terminal else WRITTEN
        items = self._items
        if items is None:
            items = self._items = deque()
        overflowed = len(items) >= self._limit
        if overflowed:
            items.clear()
            self._resync = True
        else:
            items.append(item)
        self._wake()
        return OVERFLOWED if overflowed else QUEUED

    def _quiet_check(self) -> None:
        """The timer fired: end the wait if it has lasted its time, else look again later."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._closed:
            return  # not waiting now: the next wait arms the timer again
        loop = waiter.get_loop()
        due = self._due
        if self.channel is not None and self._transport is not None:
            due = max(due, self.channel.written_at + self._wait)
        if loop.time() >= due:
            self._parked = False
            waiter.set_result(_EXPIRED)
        else:
            self._timer = loop.call_at(due, self._quiet_check)

    def resync(self) -> None:
        self._items = None
        self._resync = True
        self._wake()

    def close(self) -> None:
        self._closed = True
        self.disarm()
        self._wake()

    def disarm(self) -> None:
        """Cancel the quiet-time timer (the stream is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def next(self, wait: float) -> Announcement | _Resync | _Close | None:
        """The next announcement, RESYNC, CLOSE, or None when `wait` seconds passed with nothing."""
        if self._closed:
            return CLOSE
        if not self._items and not self._resync:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._wait = wait
            self._due = loop.time() + wait
            if self._timer is None:
                self._timer = loop.call_at(self._due, self._quiet_check)
            self._parked = True
            try:
                await waiter
            finally:
                self._parked = False
                self._waiter = None
            if waiter.result() is _EXPIRED:
                return None
        if self._closed:
            return CLOSE
        if self._resync:
            self._resync = False
            return RESYNC
        assert self._items  # woken with something to hand over
        return self._items.popleft()


class SubscriptionUnavailable(RedisConnectionError):
    """Redis did not confirm a stream's subscription in time: the stream cannot start safely."""


class _Channel:
    """One pub/sub channel and the streams of this process that hear it."""

    __slots__ = ("backlog", "confirmed", "linger", "name", "resubscribed", "subs", "written_at")

    def __init__(self, name: bytes):
        self.name = name
        self.subs: set[Subscription] = set()
        # Changes still being handed out to this channel's streams, in order, a slice at a time:
        # each entry is [announcement, the streams it goes to, how many have it, those of them
        # it ended]; or [CLOSE, streams to end, how many are ended, None].
        self.backlog: deque[list[Any]] = deque()
        # Done once Redis confirmed the SUBSCRIBE on the current connection.
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Subscribed again after a lost connection: its streams must re-read the record.
        self.resubscribed = False
        self.linger: asyncio.TimerHandle | None = None
        # When the hub last wrote a change of this channel to a waiting stream (loop time).
        self.written_at = 0.0


class _Resp:
    """An incremental reader of the replies a subscribed connection gets (RESP2 or RESP3):
    arrays or pushes of bulk strings and integers, and simple strings (PONG)."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def feed(self, data: bytes) -> None:
        self.buf = self.buf[self.pos :] + data if self.pos < len(self.buf) else data
        self.pos = 0

    def replies(self) -> list[list[Any]]:
        """Every whole reply in the buffer; a partial one stays for the next feed."""
        buf = self.buf
        pos = self.pos
        size = len(buf)
        find = buf.find
        out = []
        while pos < size:
            start = pos
            eol = find(b"\r\n", pos)
            if eol < 0:
                break
            kind = buf[pos]
            if kind == 43:  # "+": a simple string (PONG outside subscribed mode)
                out.append([buf[pos + 1 : eol].lower()])
                pos = eol + 2
                continue
            if kind == 45:  # "-"
                raise RedisConnectionError("the change subscription got an error reply")
            if kind != 42 and kind != 62:  # "*" array, ">" RESP3 push
                raise RedisConnectionError("the change subscription got an unreadable reply")
            count = int(buf[pos + 1 : eol])
            pos = eol + 2
            items: list[Any] = []
            for _ in range(count):
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                kind = buf[pos]
                if kind == 36:  # "$": a bulk string
                    length = int(buf[pos + 1 : eol])
                    end = eol + 2 + length
                    if end + 2 > size:
                        break
                    items.append(buf[eol + 2 : end])
                    pos = end + 2
                elif kind == 58:  # ":": an integer
                    items.append(int(buf[pos + 1 : eol]))
                    pos = eol + 2
                else:
                    raise RedisConnectionError("the change subscription got an unreadable reply")
            if len(items) < count:
                pos = start  # not all here yet
                break
            out.append(items)
        self.pos = pos
        return out


class _Replies(asyncio.Protocol):
    """The hub's connection, read as its bytes arrive; `ended` fails when it is lost."""

    def __init__(self, hub: Hub, transport: Any, ended: asyncio.Future[None]):
        self._hub = hub
        self._transport = transport
        # redis-py's reader: told when the connection is lost, so that closing it completes.
        self._previous = transport.get_protocol()
        self._ended = ended
        self._resp = _Resp()

    def data_received(self, data: bytes) -> None:
        hub = self._hub
        hub._last_heard = time.monotonic()
        try:
            self._resp.feed(data)
            for reply in self._resp.replies():
                hub._reply(reply)
        except Exception as exc:
            self._end(exc)
            self._transport.abort()

    def eof_received(self) -> bool:
        self._end(ConnectionError("the change subscription was closed"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("the change subscription was closed"))
        self._previous.connection_lost(exc)

    def _end(self, exc: BaseException) -> None:
        if not self._ended.done():
            self._ended.set_exception(exc)


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Hub:
    def __init__(
        self,
        client: Any,
        keys: Keys,
        buffer: int,
        *,
        idle_ping_seconds: float = 5.0,
        ping_timeout_seconds: float = 3.0,
        subscribe_timeout_seconds: float = 5.0,
        linger_seconds: float = 2.0,
    ):
        # `client`: a redis.asyncio client whose pool makes the connection (never returned to it).
        self._client = client
        self._keys = keys
        self._all_channel = keys.channel.encode()
        self._buffer = buffer
        self._idle_ping = idle_ping_seconds
        self._ping_timeout = ping_timeout_seconds
        self._subscribe_timeout = subscribe_timeout_seconds
        # A channel left without streams stays subscribed this long, so a client that
        # reconnects (or many opening and closing streams of one task) does not churn it.
        self._linger = linger_seconds
        self._channels: dict[bytes, _Channel] = {}
        # Channels whose SUBSCRIBE was sent on the current connection, oldest first: Redis
        # confirms in order, so each confirmation belongs to the oldest outstanding one.
        self._pending: dict[bytes, deque[_Channel]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        self._ping_sent: float | None = None
        self._last_heard = 0.0
        self.closing = False
        self._streams = 0
        self._global_streams = 0
        # Counters for /metrics and the benchmark.
        self.reconnects = 0
        self.delivered = 0
        self.overflows = 0
        self.written = 0  # of those delivered, written to the client directly
        self.received = 0
        self.by_state: Counter[str] = Counter()

    @property
    def live(self) -> bool:
        return self._live.is_set()

    @property
    def global_streams(self) -> int:
        return self._global_streams

    @property
    def streams(self) -> int:
        return self._streams

    @property
    def channels(self) -> int:
        """Channels subscribed (or being subscribed) now."""
        return len(self._channels)

    def _channel_name(self, task_id: str | None) -> bytes:
        return self._all_channel if task_id is None else self._keys.task_channel(task_id).encode()

    async def subscribe(self, task_id: str | None) -> Subscription:
        """A stream's subscription to one task's changes, or to every change with task_id=None.

        Returns once Redis has confirmed the channel's subscription: from then on every change
        announced reaches the stream. Raises SubscriptionUnavailable when that takes too long.
        """
        sub = Subscription(task_id, self._buffer)
        if self.closing:
            sub.close()
            return sub
        name = self._channel_name(task_id)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(name)
            self._send_subscribe(channel)
        elif channel.linger is not None:
            channel.linger.cancel()
            channel.linger = None
        channel.subs.add(sub)
        sub.channel = channel
        self._streams += 1
        if task_id is None:
            self._global_streams += 1
        if not channel.confirmed.done():
            try:
                async with asyncio.timeout(self._subscribe_timeout):
                    await asyncio.shield(channel.confirmed)
            except BaseException:
                self.unsubscribe(sub)
                raise SubscriptionUnavailable("the change subscription is not live") from None
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        channel = sub.channel
        if channel is None or sub not in channel.subs:
            return
        channel.subs.discard(sub)
        sub.channel = None
        sub.disarm()
        self._streams -= 1
        if sub.task_id is None:
            self._global_streams -= 1
        if not channel.subs and channel.linger is None:
            loop = asyncio.get_running_loop()
            channel.linger = loop.call_later(self._linger, self._drop_if_unused, channel)

    def _drop_if_unused(self, channel: _Channel) -> None:
        channel.linger = None
        if channel.subs or self._channels.get(channel.name) is not channel:
            return
        del self._channels[channel.name]
        if self._writer is not None:
            self._writer.write(_command(b"UNSUBSCRIBE", channel.name))

    def _send_subscribe(self, channel: _Channel) -> None:
        if self._writer is None:
            return  # subscribed when the connection is made
        self._pending.setdefault(channel.name, deque()).append(channel)
        self._writer.write(_command(b"SUBSCRIBE", channel.name))

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
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Cancelled while redis-py makes the connection, the hub may not hear it (redis-py 8.1
        # swallows a cancel during a connect, see disconnects.py) and would go on to serve: so
        # cancel again until it has ended. Seen as an app that never shut down when stopped
        # within moments of starting.
        while not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=0.1)
        if not runner.cancelled() and runner.exception() is not None:
            log.warning("the change subscription ended with %r", runner.exception())

    def close_streams(self) -> None:
        """End every open stream and refuse new ones: the process is shutting down."""
        self.closing = True
        for channel in self._channels.values():
            for sub in channel.subs:
                sub.close()

    def _dispatch(self, name: bytes, message: bytes) -> None:
        self.received += 1
        channel = self._channels.get(name)
        if channel is None or not channel.subs:
            return  # left over from a channel being unsubscribed
        item = Announcement.parse(message.decode())
        self.by_state[item.state] += 1
        if not channel.backlog and len(channel.subs) * _WAKE_COST <= _FAN_OUT_BUDGET:
            channel.written_at = asyncio.get_running_loop().time()
            for sub in channel.subs:
                if self._count(sub.push(item)) == ENDED:
                    sub.close()
            return
        # Thousands of streams of one task: each woken stream writes before the loop looks at
        # its sockets again, so waking them all at once would hold every other stream's change
        # (and every request) behind the whole fan-out. A slice per loop turn instead; a change
        # arriving meanwhile waits its turn behind the earlier ones, so each stream still gets
        # this channel's changes in order.
        channel.backlog.append([item, None, 0, []])
        if len(channel.backlog) == 1:
            self._fan_out(channel)

    def _count(self, outcome: Handed) -> Handed:
        if outcome == OVERFLOWED:
            self.overflows += 1
        else:
            self.delivered += 1
            if outcome <= ENDED:
                self.written += 1
        return outcome

    def _fan_out(self, channel: _Channel) -> None:
        """Hand the oldest change of the channel's backlog to the next slice of its streams."""
        entry = channel.backlog[0]
        item, subs, done, ending = entry
        if subs is None:
            subs = entry[1] = list(channel.subs)  # those subscribed when its turn came
        end = len(subs)
        spent = 0
        try:
            if item is CLOSE:
                # Streams whose last change was written directly: each one's task now ends its
                # response, the costly part, a slice at a time after all of them had the change.
                while done < end and spent < _FAN_OUT_BUDGET:
                    subs[done].close()
                    done += 1
                    spent += _WAKE_COST
            else:
                channel.written_at = asyncio.get_running_loop().time()
                while done < end and spent < _FAN_OUT_BUDGET:
                    sub = subs[done]
                    done += 1
                    outcome = self._count(sub.push(item))
                    if outcome == ENDED:
                        ending.append(sub)
                    spent += 1 if outcome <= ENDED else _WAKE_COST
        finally:
            # Whatever happened to one stream (a bug would be logged by the loop), the channel's
            # other streams and later changes still get their turn.
            if done < end:
                entry[2] = done
            else:
                channel.backlog.popleft()
                if ending:
                    channel.backlog.append([CLOSE, ending, 0, None])
            if channel.backlog:
                asyncio.get_running_loop().call_soon(self._fan_out, channel)

    def _confirmed(self, name: bytes) -> None:
        waiting = self._pending.get(name)
        if not waiting:
            return
        channel = waiting.popleft()
        if not waiting:
            del self._pending[name]
        if self._channels.get(name) is not channel:
            return  # unsubscribed meanwhile; its UNSUBSCRIBE follows
        if not channel.confirmed.done():
            channel.confirmed.set_result(None)
        if channel.resubscribed:
            # Anything announced while the connection was down may be missing from these
            # streams: each re-reads the record.
            channel.resubscribed = False
            for sub in channel.subs:
                sub.resync()

    def _lost(self) -> None:
        self._live.clear()
        self._writer = None
        self._pending.clear()
        for channel in self._channels.values():
            if channel.confirmed.done():
                channel.confirmed = asyncio.get_running_loop().create_future()
            channel.resubscribed = True

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            connection = None
            try:
                connection = await self._client.connection_pool.get_connection()
                backoff = 0.05
                await self._serve(connection._writer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change subscription lost (%s); reconnecting", type(exc).__name__)
            finally:
                self._lost()
                if connection is not None:
                    await connections.discard(self._client, connection)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            self.reconnects += 1

    async def _serve(self, writer: asyncio.StreamWriter) -> None:
        # Read as it arrives, in the transport's own callback: through the StreamReader, every
        # change would wake this task in a turn of the loop of its own (~17 µs a change more).
        # Nothing is left unread in the reader: Redis says nothing after the handshake until
        # asked, and nothing is asked before the swap (redis-py's reader is left empty).
        ended = asyncio.get_running_loop().create_future()
        transport = writer.transport
        transport.set_protocol(_Replies(self, transport, ended))
        self._writer = writer
        for channel in self._channels.values():
            self._send_subscribe(channel)
        # The first PONG proves the connection works end to end: then the hub is live.
        writer.write(_command(b"PING"))
        self._ping_sent = self._last_heard = time.monotonic()
        watchdog = asyncio.create_task(self._watch(writer))
        try:
            await ended
        finally:
            watchdog.cancel()

    def _reply(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"message":
            self._dispatch(reply[1], reply[2])
        elif kind == b"subscribe":
            self._confirmed(reply[1])
        elif kind == b"pong":
            self._ping_sent = None
            if not self._live.is_set():
                self._live.set()
                log.info("change subscription live")

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        """A half-open connection reads as silence: ping it when quiet, and drop it (the reader
        then sees it closed, and the hub reconnects) when the answer does not come. A timer of
        its own, so that reading each change costs no timeout."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if self._ping_sent is not None:
                if now - self._ping_sent > self._ping_timeout:
                    log.warning("no answer to ping on the change subscription")
                    writer.transport.abort()
                    return
            elif now - self._last_heard > self._idle_ping:
                writer.write(_command(b"PING"))
                self._ping_sent = now
