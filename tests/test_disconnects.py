"""Every way a client can go away releases its stream within a few seconds: its stream slot, its
hub subscription, and the open-streams gauge, over raw sockets that FIN or RST (issue 10)."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.harness import Service, accept_directly, direct_recorder

LIMIT = 10


@pytest.fixture(scope="module")
def tight(redis_url, tmp_path_factory) -> Iterator[tuple[Service, str]]:
    """A web process with room for 10 streams, and a task that stays open (no worker runs it)."""
    svc = Service(redis_url, tmp_path_factory.mktemp("tight"),
                  extra_env={"MAX_STREAMS_PER_PROCESS": str(LIMIT)})  # fmt: skip
    recorder = direct_recorder(svc)
    try:
        svc.start_web()
        yield svc, accept_directly(recorder)
    finally:
        recorder.client.close()
        svc.stop()


def open_streams(svc: Service) -> int:
    text = httpx.get(f"{svc.url}/metrics", timeout=5).text
    return sum(int(n) for n in re.findall(r"^taskstream_open_streams\{[^}]*\} (\d+)", text, re.M))


def connect(svc: Service, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", svc.ports[0]), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def first_bytes(sock: socket.socket) -> None:
    got = b""
    while b"retry:" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got


def fin_before_first_byte(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_WR)  # half-closed: it could still read, but never does


def fin_after_a_pipelined_request(sock: socket.socket) -> None:
    # A second request queued behind the stream: the server holds it unread until the stream ends.
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)


def fin_after_first_byte(sock: socket.socket) -> None:
    first_bytes(sock)
    sock.shutdown(socket.SHUT_WR)


def close_before_first_byte(sock: socket.socket) -> None:
    sock.close()  # a browser aborting mid-connect, or a proxy closing its side


def rst_after_first_byte(sock: socket.socket) -> None:
    first_bytes(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def rst_before_first_byte(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("stream", ["global", "task"])
@pytest.mark.parametrize(
    "leave",
    [fin_before_first_byte, fin_after_first_byte, fin_after_a_pipelined_request,
     close_before_first_byte,
     rst_before_first_byte, rst_after_first_byte],
    ids=lambda f: f.__name__,
)  # fmt: skip
def test_a_client_that_goes_away_gives_its_stream_back(
    tight: tuple[Service, str], stream: str, leave: Callable[[socket.socket], None]
) -> None:
    svc, task_id = tight
    path = "/events" if stream == "global" else f"/tasks/{task_id}/events"
    assert open_streams(svc) == 0
    sockets = [connect(svc, path) for _ in range(LIMIT)]
    for sock in sockets:
        leave(sock)
    # Within a few seconds every one is released (keepalives come only every 15 s, so no write
    # to a dead socket is what notices it)...
    deadline = time.monotonic() + 5
    while open_streams(svc) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_streams(svc) == 0
    # ...and all ten places can be taken again.
    with httpx.Client(timeout=5) as client:
        fresh = [client.send(client.build_request("GET", svc.url + path), stream=True)
                 for _ in range(LIMIT)]  # fmt: skip
        try:
            assert [r.status_code for r in fresh] == [200] * LIMIT
            assert client.get(svc.url + path).status_code == 503  # the bound still holds
        finally:
            for response in fresh:
                response.close()
    for sock in sockets:
        sock.close()
    deadline = time.monotonic() + 5
    while open_streams(svc) and time.monotonic() < deadline:
        time.sleep(0.1)
