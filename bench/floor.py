"""The machine's floor for the spread: a bare uvloop server that writes the same bytes to every
socket, as fast as a loop can, with nothing else in it (no Quart, no Hypercorn, no hub).

Run as `python -m bench.floor PORT STREAMS SIZE`: it answers each request with an SSE response
(HTTP/1.1, chunked) whose first event is id 1, and once STREAMS connections are open it writes
events 2..7 of SIZE bytes to all of them, a second apart, then ends every response. The spread of
each event over the clients (bench.client's `hold`, as for the service) is what one process on
this machine can do at best: the kernel's send on loopback also delivers to the receiving socket
and wakes its reader.

`round_trip` is the floor under the change-to-client latency: a Redis PING's round trip, back to
back and after the machine idled 10 ms (the latency task's step), when each process woken costs
more on a virtual machine whose idle CPUs halt.

`send_cost` is the kernel's part alone: one process sends an event of SIZE bytes to each of its
own loopback connections, no reader anywhere, and times the sends.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import redis
import uvloop

from bench.stack import ROOT, hold_clients, merge_receipts, read_report
from taskstream.web.launch import raise_open_file_limit

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(seq: int, size: int) -> bytes:
    event = b'id: %d\ndata: {"seq":%d,"pad":"%s"}\n\n' % (seq, seq, b"x" * size)
    return b"%x\r\n%s\r\n" % (len(event), event)


async def _serve(port: int, streams: int, size: int) -> None:
    open_: list[Any] = []
    ready = asyncio.Event()

    class Stream(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            # uvloop's transports are asyncio's in all but class.
            self.transport = transport
            self.asked = b""

        def data_received(self, data: bytes) -> None:
            self.asked += data
            if b"\r\n\r\n" in self.asked and self.transport not in open_:
                self.transport.write(_HEAD + _chunk(1, size))
                open_.append(self.transport)
                if len(open_) >= streams:
                    ready.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Stream, "127.0.0.1", port, backlog=4096)
    await ready.wait()
    for seq in range(2, 8):
        await asyncio.sleep(1.0)
        chunk = _chunk(seq, size)
        for transport in open_:
            transport.write(chunk)
    await asyncio.sleep(0.5)
    for transport in open_:
        transport.write(b"0\r\n\r\n")
        transport.close()
    server.close()


def measure(
    port: int, streams: int = 10_000, size: int = 420, clients: int = 2
) -> tuple[list[float], list[float]]:
    """The spread (ms) of each of the floor server's events over `streams` client sockets: by
    the kernel's arrival stamps, and by the clients' reads."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", str(port), str(streams), str(size)], cwd=ROOT
    )
    try:
        procs = hold_clients(port, "/", streams, clients)
        for p in procs:
            read_report(p, "ready", 180)
        dones = [read_report(p, "done", 120) for p in procs]
    finally:
        server.wait(30)
    merged = merge_receipts(dones)
    whole = [m for s, m in sorted(merged.items()) if s > 1 and m.count == streams]
    return [m.spread_ms() for m in whole], [m.spread_ms(read=True) for m in whole]


def round_trip(url: str, rounds: int = 300, idle: float = 0.01) -> tuple[float, float]:
    """Median µs of a Redis PING round trip: back to back, and each after `idle` seconds idle."""
    client = redis.Redis.from_url(url)
    try:
        medians = []
        for pause in (0.0, idle):
            times = []
            for _ in range(rounds):
                if pause:
                    time.sleep(pause)
                started = time.perf_counter()
                client.ping()
                times.append((time.perf_counter() - started) * 1e6)
            medians.append(statistics.median(times))
    finally:
        client.close()
    return medians[0], medians[1]


def send_cost(sockets: int = 2_000, size: int = 420, rounds: int = 5) -> float:
    """µs per send of one event on a loopback TCP socket that nobody reads (median of rounds)."""
    data = _chunk(2, size)
    with socket.create_server(("127.0.0.1", 0), backlog=sockets) as server:
        pairs: list[tuple[socket.socket, socket.socket]] = []
        try:
            for _ in range(sockets):
                client = socket.create_connection(server.getsockname())
                sent, _ = server.accept()
                sent.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pairs.append((sent, client))
            per_send = []
            for _ in range(rounds):
                started = time.perf_counter()
                for sent, _ in pairs:
                    sent.send(data)
                per_send.append((time.perf_counter() - started) / sockets * 1e6)
                for _, client in pairs:
                    client.recv(65536)
        finally:
            for sent, client in pairs:
                sent.close()
                client.close()
    return statistics.median(per_send)


if __name__ == "__main__":
    raise_open_file_limit()
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
