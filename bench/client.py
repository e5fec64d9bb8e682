"""The load generator: plain asyncio protocols over raw sockets, cheap enough to run thousands.

Run as its own process (`python -m bench.client MODE JSON`), so its CPU is not the web's; it
writes one JSON line per milestone on stdout for the bench to read.

Each SSE event is one chunk of the chunked HTTP body (Hypercorn writes one chunk per body message,
and the service sends one message per event), so an event's `id:` and `data:` lines sit together
in the raw bytes and a regular expression finds them without decoding the chunking.

Times are `time.monotonic()` (CLOCK_MONOTONIC is one clock for every process on the machine) and,
for latency against the snapshot's `updated_at`, `time.time()`.

The streams held for the spread (`hold`) note two times for each event: when the kernel put its
bytes on the client's socket (SO_TIMESTAMPNS, stamped on loopback inside the server's send), and
when this process read them. On a machine of 2 cores the clients of 10,000 streams read on the
core the server leaves them, so their reads trail the server by as long as they take; the
kernel's stamp is when the change reached the client, as a client on a machine of its own would
read it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import sys
import time
from dataclasses import astuple, dataclass, field
from datetime import datetime
from typing import Any, cast

import uvloop

from taskstream.web.launch import raise_open_file_limit

_EVENT = re.compile(rb"\nid: (\d+)\ndata: ([^\n]*)\n\n")
_KEEP_TAIL = 4096
# Linux's values; Python's socket module does not name them.
_SO_TIMESTAMPNS = 35
_SCM_TIMESTAMPNS = 35
_STAMP = struct.Struct("qq")  # struct timespec, CLOCK_REALTIME


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def stream_request(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


class SSE(asyncio.Protocol):
    """One stream: notes when each event id arrives; optionally keeps the data for latency."""

    def __init__(self, owner: Streams, request: bytes, keep_data: bool, close_after_first: bool):
        self.owner = owner
        self.request = request
        self.keep_data = keep_data
        self.close_after_first = close_after_first
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.events = 0
        self.status_ok: bool | None = None
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        # Set at the first event, or at the end of a connection that never had one.
        self.first = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio's in all but class.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.feed(data, now, now, time.time())

    def feed(self, data: bytes, arrived: float, now: float, wall: float) -> None:
        """`arrived`: when the bytes reached the socket; `now`: when they were read (monotonic)."""
        buf = self.buf + data
        if self.status_ok is None:
            if len(buf) < 12:
                self.buf = buf
                return
            self.status_ok = buf.startswith(b"HTTP/1.1 200")
            if not self.status_ok:
                self.owner.errors += 1
                self.close()
                return
        end = 0
        for match in _EVENT.finditer(buf):
            end = match.end()
            self.events += 1
            if not self.first.done():
                self.first.set_result(None)
            self.owner.received(
                self,
                int(match.group(1)),
                arrived,
                now,
                wall,
                match.group(2) if self.keep_data else None,
            )
            if self.close_after_first:
                self.close()
                break
        self.buf = buf[end:] if end else buf[-_KEEP_TAIL:]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.events)
        if not self.first.done():
            self.first.set_result(None)


class StampedSSE(SSE):
    """A stream read straight from its socket with recvmsg, for the kernel's arrival stamp."""

    # CLOCK_REALTIME minus CLOCK_MONOTONIC, to put the kernel's stamps on the monotonic clock.
    _offset = time.time() - time.monotonic()

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock: socket.socket | None = sock
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, self.request)
        except OSError:
            self.close()
            raise
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(_STAMP.size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        if not data:
            self.close()
            return
        now = time.monotonic()
        arrived = now
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
                sec, nsec = _STAMP.unpack(raw[: _STAMP.size])
                arrived = sec + nsec / 1e9 - self._offset
        self.feed(data, arrived, now, time.time())

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if sock.fileno() >= 0:
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except RuntimeError:  # the loop has gone: the socket goes with the process
                pass
        sock.close()
        self.connection_lost(None)


@dataclass
class SeqStat:
    """One event id over the streams: how many got it; first and last arrival, and read."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    first_read: float = 0.0
    last_read: float = 0.0

    def merge(self, other: SeqStat) -> None:
        """Take in the same event id as another client process saw it."""
        self.count += other.count
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.first_read = min(self.first_read, other.first_read)
        self.last_read = max(self.last_read, other.last_read)

    def spread_ms(self, read: bool = False) -> float:
        """First to last stream: by the kernel's arrival stamps, or (`read`) by the reads."""
        return (self.last_read - self.first_read if read else self.last - self.first) * 1000


@dataclass
class Streams:
    """Many SSE connections to one path; per event id: how many got it, first and last receipt."""

    host: str
    port: int
    path: str
    keep_data: bool = False
    close_after_first: bool = False
    errors: int = 0
    first_events: int = 0
    all_first: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0
    seqs: dict[int, SeqStat] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    skip_first: bool = True
    stamped: bool = False  # read with the kernel's arrival stamps (StampedSSE)

    def received(
        self, conn: SSE, seq: int, arrived: float, now: float, wall: float, data: bytes | None
    ) -> None:
        stat = self.seqs.get(seq)
        if stat is None:
            stat = self.seqs[seq] = SeqStat(0, arrived, arrived, now, now)
        stat.count += 1
        stat.first = min(stat.first, arrived)
        stat.last = max(stat.last, arrived)
        stat.last_read = now
        if conn.events == 1:
            self.first_events += 1
            if self.first_events >= self.target:
                self.all_first.set()
        elif data is not None:
            # Not the first event, which is the stored snapshot and may be old: a live change.
            updated = json.loads(data)["updated_at"]
            at = datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
            self.latencies.append(wall - at)

    async def open(self) -> SSE:
        loop = asyncio.get_running_loop()
        request = stream_request(self.host, self.port, self.path)
        if self.stamped:
            conn = StampedSSE(self, request, self.keep_data, self.close_after_first)
            await conn.connect(self.host, self.port)
            return conn
        _, proto = await loop.create_connection(
            lambda: SSE(self, request, self.keep_data, self.close_after_first),
            self.host,
            self.port,
        )
        return proto

    async def open_many(self, n: int, parallel: int) -> list[SSE]:
        self.target += n
        gate = asyncio.Semaphore(parallel)
        conns: list[SSE] = []

        async def one() -> None:
            async with gate:
                for attempt in range(5):
                    conn = None
                    try:
                        conn = await self.open()
                        # Hold the gate until the server has answered: fewer half-open accepts.
                        await asyncio.wait_for(asyncio.shield(conn.first), 30)
                    except (OSError, TimeoutError):
                        if conn is not None:
                            conn.close()
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    if conn.events:
                        conns.append(conn)
                        return
                self.errors += 1

        await asyncio.gather(*(one() for _ in range(n)))
        return conns


def yield_to_the_server() -> None:
    """Run this load generator as a batch job: the kernel then never preempts the server to run
    it when one of its sockets receives. On a machine of 2 cores the clients of 10,000 streams
    share the cores with the server; woken at each event they would take the server's core in
    the middle of a fan-out (hundreds of preemptions per change), which clients on machines of
    their own never do. It changes nothing in the server, and the clients still read every
    event on the core the server leaves them."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:  # not where the kernel refuses it; the figures would show it
        print(f"bench client: SCHED_BATCH refused ({exc}); clients run as usual", file=sys.stderr)


async def hold_streams(args: dict[str, Any]) -> None:
    """Open `n` streams, say so, then keep them until the server ends them (or `seconds`)."""
    yield_to_the_server()
    streams = Streams(args["host"], args["port"], args["path"], stamped=True)
    started = time.monotonic()
    conns = await streams.open_many(args["n"], args.get("parallel", 200))
    emit(
        kind="ready",
        opened=len(conns),
        errors=streams.errors,
        seconds=time.monotonic() - started,
        at=time.monotonic(),
    )
    pending = [c.done for c in conns]
    if pending:
        await asyncio.wait(pending, timeout=args.get("seconds", 120))
    ended = sum(1 for c in conns if c.done.done())
    for conn in conns:
        conn.close()
    emit(
        kind="done",
        errors=streams.errors,
        ended=ended,
        seqs={s: astuple(v) for s, v in streams.seqs.items()},
    )


async def latency(args: dict[str, Any]) -> None:
    """A few streams following one task to its end; the delay of each live event."""
    streams = Streams(args["host"], args["port"], args["path"], keep_data=True)
    conns = await streams.open_many(args["n"], args["n"])
    emit(kind="ready", opened=len(conns), errors=streams.errors)
    await asyncio.wait([c.done for c in conns], timeout=args.get("seconds", 60))
    emit(kind="done", errors=streams.errors, latencies=streams.latencies)


async def stream_opens(args: dict[str, Any]) -> None:
    """Open, read the first event, close; `concurrency` loops for `seconds`."""
    streams = Streams(args["host"], args["port"], args["path"], close_after_first=True)
    deadline = time.monotonic() + args["seconds"]
    done = 0
    failed = 0

    async def loop_() -> None:
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                conn = await streams.open()
                await asyncio.wait_for(conn.done, 10)
            except (OSError, TimeoutError):
                failed += 1
                continue
            if conn.events and conn.status_ok:
                done += 1
            else:
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(loop_() for _ in range(args["concurrency"])))
    emit(kind="done", completed=done, failed=failed, seconds=time.monotonic() - started)


class _Http(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        head = self.buf[:head_end].decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n"):
            if line.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        if len(self.buf) < head_end + 4 + length:
            return
        self.buf = self.buf[head_end + 4 + length :]
        if not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def request(self, raw: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return await self.waiter


async def submissions(args: dict[str, Any]) -> None:
    """POST /tasks (add) over `concurrency` keep-alive connections for `seconds`."""
    host, port = args["host"], args["port"]
    body = json.dumps({"task": "add", "kwargs": {"x": 1, "y": 2}}).encode()
    raw = (
        f"POST /tasks HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args["seconds"]
    accepted = 0
    other = 0

    async def loop_() -> None:
        nonlocal accepted, other
        conn: _Http | None = None
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    _, conn = await loop.create_connection(_Http, host, port)
                status = await asyncio.wait_for(conn.request(raw), 10)
            except (OSError, TimeoutError):
                other += 1
                conn = None
                continue
            if status == 202:
                accepted += 1
            else:
                other += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    emit(kind="started")
    started = time.monotonic()
    await asyncio.gather(*(loop_() for _ in range(args["concurrency"])))
    emit(kind="done", accepted=accepted, other=other, seconds=time.monotonic() - started)


MODES = {
    "hold": hold_streams,
    "latency": latency,
    "opens": stream_opens,
    "submit": submissions,
}


def main() -> None:
    raise_open_file_limit()
    mode, raw = sys.argv[1], sys.argv[2]
    # uvloop, as the web runs: the load generators' own CPU is inside every figure, on 2 cores.
    uvloop.run(MODES[mode](json.loads(raw)))


if __name__ == "__main__":
    main()
