"""The hub writes a change straight to the socket of each stream waiting for it (direct.py):
the streams must read exactly what they read through Quart and Hypercorn, byte for byte in
framing, in order, with keepalives only when quiet and a connection that stays usable after."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from taskstream.record import Change
from taskstream.web import direct
from taskstream.web.embed import PrefixDispatcher
from tests.harness import (
    Proc,
    Service,
    accept_directly,
    assert_contiguous,
    direct_recorder,
    free_port,
    make_certificates,
    metric,
    python,
)


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _progress(n: int) -> dict:
    return {"state": "PROGRESS", "progress": {"current": n, "total": 20, "percent": n * 5.0}}


class RawStream:
    """One stream over a plain socket, parsing the HTTP/1.1 chunked body by hand."""

    def __init__(self, port: int, path: str, version: str = "1.1", headers: str = ""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        request = f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n{headers}\r\n"
        self.sock.sendall(request.encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        self.head = head.decode("latin-1").lower()
        # The server answers in its own version, whatever the request's (RFC 9110, 2.5).
        assert self.head.startswith("http/1.1 200"), self.head

    def _until(self, mark: bytes) -> bytes:
        while mark not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        part, self.buf = self.buf.split(mark, 1)
        return part

    def _exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        part, self.buf = self.buf[:size], self.buf[size:]
        return part

    def chunk(self) -> bytes:
        """The next chunk's payload (b"" for the last chunk), checking the framing."""
        size = int(self._until(b"\r\n"), 16)
        payload = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return payload

    def close(self) -> None:
        self.sock.close()


class Followers:
    """Threads reading a task's stream, one per set of httpx.Client options, started at once.

    A stream counts as open (open_streams) from its subscription, before it has read the task:
    a test that records changes must first `wait_first`, or a stream would rightly start at a
    later snapshot than seq 1.
    """

    def __init__(self, base: str, task_id: str, clients: list[dict[str, Any]]):
        self.url = f"{base}/tasks/{task_id}/events"
        self.events: list[list[tuple[int, dict]]] = [[] for _ in clients]
        self.versions: list[str] = ["" for _ in clients]
        self._first = threading.Semaphore(0)
        self._readers = [
            threading.Thread(target=self._follow, args=(i, options))
            for i, options in enumerate(clients)
        ]
        for reader in self._readers:
            reader.start()

    def _follow(self, index: int, options: dict[str, Any]) -> None:
        events = self.events[index]
        with (
            httpx.Client(**{"timeout": httpx.Timeout(60, connect=5), **options}) as client,
            connect_sse(client, "GET", self.url) as source,
        ):
            self.versions[index] = source.response.http_version
            for sse in source.iter_sse():
                if sse.data:
                    events.append((int(sse.id), json.loads(sse.data)))
                    if len(events) == 1:
                        self._first.release()

    def wait_first(self) -> None:
        """Until every stream has read its first event."""
        for _ in self._readers:
            assert self._first.acquire(timeout=30), "a stream sent nothing"

    def join(self) -> None:
        for reader in self._readers:
            reader.join(30)


def test_many_streams_get_every_change_in_order_written_directly(make_service):
    svc = make_service()
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    streams = 40
    followers = Followers(svc.url, task_id, [{} for _ in range(streams)])
    followers.wait_first()
    written_before = metric(svc.url, "events_written_directly_total")

    for n in range(1, 21):
        recorder.record(Change(task_id, _progress(n)))
        time.sleep(0.02)
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": 42}))
    followers.join()
    recorder.client.close()

    for events in followers.events:
        assert_contiguous([seq for seq, _ in events], first=1)
        assert [e["progress"]["current"] for _, e in events[1:-1]] == list(range(1, 21))
        assert events[-1][1]["state"] == "SUCCESS"
        assert events[-1][1]["links"]["events"] == f"/tasks/{task_id}/events"
    # The streams waited between changes, so the hub wrote (nearly) all of them itself.
    written = metric(svc.url, "events_written_directly_total") - written_before
    assert written >= streams * 21 * 0.9
    _wait_for(lambda: metric(svc.url, "open_streams") == 0)


def test_the_connection_stays_usable_after_a_directly_written_end(make_service):
    svc = make_service()
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    raw = RawStream(svc.ports[0], f"/tasks/{task_id}/events")
    assert raw.chunk().startswith(b"retry: ")
    assert raw.chunk().startswith(b"id: 1\n")
    _wait_for(lambda: metric(svc.url, "open_streams") == 1)
    recorder.record(Change(task_id, _progress(1)))
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
    recorder.client.close()
    second = raw.chunk()
    assert second.startswith(b"id: 2\ndata: ") and second.endswith(b"\n\n")
    assert json.loads(second.split(b"data: ", 1)[1])["progress"]["current"] == 1
    assert raw.chunk().startswith(b"id: 3\n")
    assert raw.chunk() == b""  # the last chunk: the response ended, whole
    # HTTP/1.1 keeps the connection: the next request on it is answered as usual.
    raw.sock.sendall(f"GET /tasks/{task_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = raw._until(b"\r\n\r\n").decode("latin-1")
    assert head.startswith("HTTP/1.1 200"), head
    raw.close()
    assert metric(svc.url, "events_written_directly_total") == 2


def test_keepalives_are_sent_only_when_directly_written_changes_stop(make_service):
    svc = make_service(KEEPALIVE_SECONDS="0.6")
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    raw = RawStream(svc.ports[0], f"/tasks/{task_id}/events")
    raw.chunk()
    raw.chunk()
    _wait_for(lambda: metric(svc.url, "open_streams") == 1)
    # A change every 0.2 s for 2.4 s: never quiet for 0.6 s, so no keepalive among them.
    for n in range(1, 13):
        recorder.record(Change(task_id, _progress(n)))
        last = time.monotonic()
        time.sleep(0.2)
    got = [raw.chunk() for _ in range(12)]
    assert [c.split(b"\n", 1)[0] for c in got] == [b"id: %d" % (n + 1) for n in range(1, 13)]
    # Then quiet: a keepalive once the last change is 0.6 s old, and the stream goes on.
    assert raw.chunk() == b": keepalive\n\n"
    assert 0.55 <= time.monotonic() - last <= 5
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
    recorder.client.close()
    assert raw.chunk().startswith(b"id: 14\n")
    assert raw.chunk() == b""
    raw.close()
    assert metric(svc.url, "events_written_directly_total") == 13


def test_an_http_1_0_client_is_served_the_usual_way(make_service):
    # HTTP/1.0 has no chunked framing: the body is the bare events until the connection closes.
    svc = make_service()
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    raw = RawStream(svc.ports[0], f"/tasks/{task_id}/events", version="1.0")
    assert "transfer-encoding" not in raw.head and "connection: close" in raw.head
    assert raw._until(b"\n\n").startswith(b"retry: ")
    assert raw._until(b"\n\n").startswith(b"id: 1\n")
    _wait_for(lambda: metric(svc.url, "open_streams") == 1)
    recorder.record(Change(task_id, _progress(1)))
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
    recorder.client.close()
    assert raw._until(b"\n\n").startswith(b"id: 2\ndata: {")
    assert raw._until(b"\n\n").startswith(b"id: 3\ndata: {")
    while data := raw.sock.recv(65536):
        raw.buf += data
    assert raw.buf == b""
    raw.close()
    assert metric(svc.url, "events_written_directly_total") == 0


def test_directly_written_changes_carry_the_root_path(make_service):
    # Behind a proxy that strips /jobs and says so: each stream's links are under its own root.
    svc = make_service(TRUST_FORWARDED_PREFIX="true")
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    path = f"/tasks/{task_id}/events"
    proxied = RawStream(svc.ports[0], path, headers="X-Forwarded-Prefix: /jobs\r\n")
    plain = RawStream(svc.ports[0], path)
    for raw in (proxied, plain):
        raw.chunk()
        raw.chunk()
    _wait_for(lambda: metric(svc.url, "open_streams") == 2)
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
    recorder.client.close()
    for raw, root in ((proxied, "/jobs"), (plain, "")):
        snapshot = json.loads(raw.chunk().split(b"data: ", 1)[1])
        assert snapshot["links"]["events"] == f"{root}/tasks/{task_id}/events"
        assert raw.chunk() == b""
        raw.close()
    assert metric(svc.url, "events_written_directly_total") == 2


def test_over_tls_http_1_1_is_written_directly_and_http_2_the_usual_way(make_service, tmp_path):
    # An HTTP/1.1 stream's changes go through TLS as direct writes, an HTTP/2 stream's through
    # Hypercorn's h2 framing, and both read the same events.
    svc = make_service()
    recorder = direct_recorder(svc)
    with served_over_tls(svc, tmp_path) as (port, ca):
        base = f"https://127.0.0.1:{port}"
        task_id = accept_directly(recorder)
        # HTTP/1.1 and HTTP/2 (ALPN), each reading the same events.
        followers = Followers(base, task_id, [{"verify": ca, "http2": h2} for h2 in (False, True)])
        followers.wait_first()
        for n in range(1, 6):
            recorder.record(Change(task_id, _progress(n)))
            time.sleep(0.02)
        recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
        followers.join()
        assert followers.versions == ["HTTP/1.1", "HTTP/2"]
        for events in followers.events:
            assert [seq for seq, _ in events] == list(range(1, 8))
            assert events[-1][1]["state"] == "SUCCESS"
        # Six changes to the HTTP/1.1 stream written directly; none to the HTTP/2 one.
        assert metric(base, "events_delivered_total", verify=ca) == 12
        assert metric(base, "events_written_directly_total", verify=ca) == 6
    recorder.client.close()


@contextmanager
def served_over_tls(svc: Service, folder: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """The app under Hypercorn's own command line over TLS, where a client may pick HTTP/2
    (ALPN): its port, and a TLS context that trusts its certificate."""
    certs = make_certificates(folder)
    ca = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    port = free_port()
    cmd = [python(), "-m", "hypercorn", "--certfile", str(certs["server.crt"]),
           "--keyfile", str(certs["server.key"]), "--bind", f"127.0.0.1:{port}",
           "--worker-class", "uvloop", "taskstream.web.asgi:app"]  # fmt: skip
    web = Proc("web-tls", cmd, svc.env, svc.log_dir, cwd=svc.cwd).start()
    try:
        _wait_for(lambda: _answers(f"https://127.0.0.1:{port}/healthz", ca), timeout=30)
        yield port, ca
    finally:
        web.stop()


def _answers(url: str, ca: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, verify=ca, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_head_request_of_a_stream_gets_no_body_and_its_connection_stays_clean(make_service):
    svc = make_service()
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    sock = socket.create_connection(("127.0.0.1", svc.ports[0]), timeout=10)
    sock.sendall(f"HEAD /tasks/{task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    # A HEAD opens no stream (test_streams.py): the task's changes meanwhile must not reach the
    # connection either way.
    for n in range(1, 4):
        recorder.record(Change(task_id, _progress(n)))
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
    recorder.client.close()
    _wait_for(lambda: metric(svc.url, "open_streams") == 0)
    # The next request on the connection: its answer must be all that follows the HEAD's.
    sock.sendall(f"GET /tasks/{task_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    received = b""
    while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}"):
        data = sock.recv(65536)
        assert data, received
        received += data
    head, rest = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert rest.startswith(b"HTTP/1.1 200"), rest[:200]
    sock.close()
    assert metric(svc.url, "events_written_directly_total") == 0


def test_connections_are_forgotten_when_they_end_over_tls_too(make_service, tmp_path):
    svc = make_service()
    recorder = direct_recorder(svc)
    with served_over_tls(svc, tmp_path) as (port, ca):
        base = f"https://127.0.0.1:{port}"
        task_id = accept_directly(recorder)
        for _ in range(5):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            tls = ca.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(f"GET /tasks/{task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert tls.recv(65536).startswith(b"HTTP/1.1 200")
            # Gone mid-stream with a reset, as a client whose machine drops off does.
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()
        _wait_for(lambda: metric(base, "open_streams", verify=ca) == 0)
        # Only the connection asking is left.
        _wait_for(lambda: metric(base, "direct_connections", verify=ca) == 1)
    recorder.client.close()


async def test_only_gets_the_app_serves_itself_over_http_1_1_may_be_written_directly(monkeypatch):
    # Mounted in a host app, the host's own middleware (compression, say) may need to see every
    # byte, so no direct writes there; nor for HEAD (no body) or HTTP/2 (frames of its own).
    transport = object()
    client, server = ("10.0.0.7", 50123), ("127.0.0.1", 8000)
    monkeypatch.setitem(direct._transports, (client, server), transport)
    found: list[object] = []

    async def app(scope, receive, send):
        found.append(direct.transport_for(scope))

    async def host(scope, receive, send):
        raise AssertionError("not the host's")

    served = direct.FindConnection(app)
    mounted = PrefixDispatcher(host, "/jobs", served)
    get = {"type": "http", "http_version": "1.1", "method": "GET", "client": client,
           "server": server, "path": "/tasks/t/events", "root_path": ""}  # fmt: skip
    await served(dict(get), None, None)
    await mounted({**get, "path": "/jobs/tasks/t/events"}, None, None)
    await served({**get, "method": "HEAD"}, None, None)
    await served({**get, "http_version": "2"}, None, None)
    await served({**get, "client": ("10.0.0.8", 50123)}, None, None)
    assert found == [transport, None, None, None, None]
