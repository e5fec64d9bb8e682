"""Script calls from many coroutines over one Redis connection, all in flight together.

redis-py's asyncio client takes a connection from its pool for each command, packs the command,
reads the reply through a stream reader in a task of its own and gives the connection back: about
370 µs of the web's CPU for POST /tasks's one script call (record and push, 44 arguments) with 32
submissions at once, more than Celery's whole message. Here each call is written to one
connection as it comes, and the replies, read in the transport's callback as they arrive, answer
the callers in the order they wrote (Redis answers a connection's commands in order): about
30 µs.

The connection is made by a redis-py pool, so the URL, TLS, authentication, database, protocol and
Sentinel's discovery of the master are redis-py's; it is never given back. A lost connection
fails the calls in flight with redis-py's ConnectionError, and each is sent once more on a new
connection, as redis-py's own retry would (the scripts sent here are safe to repeat). A call
unanswered for `timeout` seconds ends the connection with a TimeoutError.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskstream import connections

# A reply not all here yet.
_PARTIAL: Any = object()


class _ErrorReply:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message

    def exception(self) -> Exception:
        if self.message.startswith("NOSCRIPT"):
            return NoScriptError(self.message)
        if self.message.startswith("READONLY"):
            return ReadOnlyError(self.message)
        return ResponseError(self.message)


def pack(parts: list[Any] | tuple[Any, ...]) -> bytes:
    """One command in RESP; str, int and float parts as redis-py encodes them."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
        elif isinstance(part, bytes):
            data = part
        elif isinstance(part, (int, float)) and not isinstance(part, bool):
            data = repr(part).encode()
        else:
            raise TypeError(f"cannot send {type(part).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at `pos` (RESP2 or RESP3) and where the next begins; (_PARTIAL, pos)
    when it is not all in `buf`. Strings are decoded (UTF-8), nulls read None."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return _PARTIAL, pos
    kind = buf[pos]
    after = eol + 2
    if kind == 36:  # "$" bulk string
        length = int(buf[pos + 1 : eol])
        if length < 0:
            return None, after
        end = after + length
        if end + 2 > len(buf):
            return _PARTIAL, pos
        return buf[after:end].decode(), end + 2
    if kind == 58:  # ":" integer
        return int(buf[pos + 1 : eol]), after
    if kind in (42, 126, 62):  # "*" array, "~" set, ">" push
        count = int(buf[pos + 1 : eol])
        if count < 0:
            return None, after
        items = []
        at = after
        for _ in range(count):
            item, at = read_reply(buf, at)
            if item is _PARTIAL:
                return _PARTIAL, pos
            items.append(item)
        return items, at
    if kind == 43:  # "+" simple string
        return buf[pos + 1 : eol].decode(), after
    if kind == 45:  # "-" error
        return _ErrorReply(buf[pos + 1 : eol].decode(errors="replace")), after
    if kind == 95:  # "_" null
        return None, after
    if kind == 35:  # "#" boolean
        return buf[pos + 1 : eol] == b"t", after
    if kind == 44:  # "," double
        return float(buf[pos + 1 : eol]), after
    raise RedisConnectionError(f"unreadable reply from Redis (type {chr(kind)!r})")


class _Connection(asyncio.Protocol):
    """One connection's calls in flight, oldest first, answered as their replies arrive."""

    def __init__(self, transport: Any, timeout: float):
        self.transport = transport
        # redis-py's reader: told when the connection is lost, so its disconnect completes.
        self._previous = transport.get_protocol()
        self._timeout = timeout
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._buf = b""
        self._out: list[bytes] = []
        self._answered = 0
        self._watch: asyncio.TimerHandle | None = None
        self.error: Exception | None = None
        self._loop = asyncio.get_running_loop()

    def call(self, command: bytes) -> asyncio.Future[Any]:
        if self.error is not None:
            raise self.error
        answer = self._loop.create_future()
        self._waiting.append(answer)
        # Written once per turn of the loop: submissions arrive together, and each write of
        # its own would be a system call of its own (~10 µs), here and in Redis.
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        if self._watch is None:
            self._watch = self._loop.call_later(self._timeout, self._check, self._answered)
        return answer

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.error is None and out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        size = len(buf)
        try:
            while pos < size:
                reply, pos = read_reply(buf, pos)
                if reply is _PARTIAL:
                    break
                self._answer(reply)
        except Exception as exc:
            self.fail(exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(
                f"unreadable reply from Redis: {exc}"))  # fmt: skip
            return
        self._buf = buf[pos:] if pos < size else b""

    def _answer(self, reply: Any) -> None:
        if not self._waiting:
            raise RedisConnectionError("a reply from Redis that nothing asked for")
        answer = self._waiting.popleft()
        self._answered += 1
        if answer.done():  # its caller was cancelled
            return
        if isinstance(reply, _ErrorReply):
            error = reply.exception()
            answer.set_exception(error)
            if isinstance(error, ReadOnlyError):
                # A master demoted by a failover: the next call finds the new one.
                self.fail(RedisConnectionError("the master is now a replica"))
        else:
            answer.set_result(reply)

    def _check(self, answered_then: int) -> None:
        self._watch = None
        if not self._waiting:
            return
        if self._answered == answered_then:
            self.fail(RedisTimeoutError(f"no reply from Redis in {self._timeout} s"))
            return
        self._watch = self._loop.call_later(self._timeout, self._check, self._answered)

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        waiting, self._waiting = self._waiting, deque()
        for answer in waiting:
            if not answer.done():
                answer.set_exception(error)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.transport.abort()

    def eof_received(self) -> bool:
        self.fail(RedisConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self.fail(self.error)
        self._previous.connection_lost(exc)


@functools.lru_cache(maxsize=64)
def _digest(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class Pipelined:
    """Script calls over one connection of `client`'s pool (a client of its own: the connection
    never goes back to the pool)."""

    def __init__(self, client: Any, timeout: float = 10.0):
        self._client = client
        self._timeout = timeout
        self._connection: Any = None
        self._current: _Connection | None = None
        self._opening = asyncio.Lock()

    async def eval(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA of `script`'s digest (EVAL where Redis does not hold it)."""
        return await self.evalsha(_digest(script), script, keys, args)

    async def evalsha(self, sha: str, script: str, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA, falling back to EVAL where Redis does not hold the script (after a restart,
        a failover or SCRIPT FLUSH); sent once more on a new connection if the connection fails."""
        command = pack([b"EVALSHA", sha, len(keys), *keys, *args])
        for attempt in (1, 2):
            try:
                current = self._current
                if current is None or current.error is not None:
                    current = await self._open()
                try:
                    return await current.call(command)
                except NoScriptError:
                    return await current.call(pack([b"EVAL", script, len(keys), *keys, *args]))
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _open(self) -> _Connection:
        async with self._opening:
            current = self._current
            if current is not None and current.error is None:
                return current
            await self._drop()
            pool = self._client.connection_pool
            connection = await pool.get_connection()
            # Nothing is left unread in redis-py's reader: Redis says nothing after the
            # handshake until asked.
            transport = connection._writer.transport
            current = _Connection(transport, self._timeout)
            transport.set_protocol(current)
            self._connection, self._current = connection, current
            return current

    async def _drop(self) -> None:
        connection, self._connection, self._current = self._connection, None, None
        if connection is not None:
            await connections.discard(self._client, connection)

    async def close(self) -> None:
        async with self._opening:
            if self._current is not None and self._current.error is None:
                self._current.fail(RedisConnectionError("closed"))
            await self._drop()
        await self._client.aclose()
