"""Direct writes: the hub hands a change straight to the socket of a stream that waits for it.

Through Quart, Hypercorn and h11, one SSE event costs about 25 µs of Python per stream before the
socket send (a task switch, the ASGI send chain, h11's state machine): one change to 10,000
streams of one task then takes 300 ms to reach them all. The change is the same bytes for every
one of them, so when a stream sits waiting in the hub, caught up, on an HTTP/1.1 connection the
service itself serves, the hub writes the change's chunk to that connection's transport at once
(about 8 µs, nearly all of it the kernel's send) and notes it as sent; the stream's task is not
woken.

This is safe because of when it happens. Hypercorn writes a whole chunk per `send` and a waiting
stream has no `send` under way (it is parked in `Subscription.next`, its last write returned), so
a chunk written here follows everything written before it, and the response's framing (HTTP/1.1
chunked, which keeps no count of the bytes sent) stays whole. Whatever does not fit these terms
goes the usual way and the stream's task is woken: a change out of order, a client whose socket
buffer is filling (so the stalled-client timeout still sees it), HTTP/1.0 (no chunks) or HTTP/2,
an app mounted in another (embed.py), or a server other than our own Hypercorn workers,
where no transport is known. (Behind nginx, `proxy_http_version 1.1`, which SSE wants anyway.)
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

# Bytes a connection may hold unsent before changes go the usual, waiting way again.
_MAX_UNSENT: Final = 64 * 1024
# The scope key under which a request finds its connection's transport.
_SCOPE_KEY: Final = "taskstream.direct"
# A scope key that keeps direct writes off: set for an app mounted in a host (embed.py), whose
# own middleware (compression, say) may need to see every byte of the response.
MOUNTED: Final = "taskstream.mounted"

# The open connections of this process, by (client address, server address) as in the ASGI scope.
_transports: dict[tuple[Any, Any], asyncio.WriteTransport] = {}


def _addresses(writer: asyncio.StreamWriter) -> tuple[Any, Any] | None:
    peer = writer.get_extra_info("peername")
    local = writer.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return None  # a Unix socket: no address in the scope to find it by
    return tuple(peer[:2]), tuple(local[:2])


class Connection:
    """A connection of Hypercorn's, known to the hub for as long as it is open: use as a context
    manager around the connection's read loop (read_ahead does). The key is kept from the start:
    a TLS transport forgets its addresses once the connection is lost."""

    __slots__ = ("_key", "_transport")

    def __init__(self, writer: asyncio.StreamWriter):
        self._key = _addresses(writer)
        self._transport = writer.transport

    def __enter__(self) -> None:
        if self._key is not None:
            _transports[self._key] = self._transport

    def __exit__(self, *exc: object) -> None:
        if self._key is not None and _transports.get(self._key) is self._transport:
            del _transports[self._key]


def known() -> int:
    """How many connections the hub could write to now."""
    return len(_transports)


def chunk(frame: bytes) -> bytes:
    """`frame` as one chunk of an HTTP/1.1 chunked body, exactly as h11 frames a body part."""
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def write(transport: asyncio.WriteTransport, data: bytes) -> bool:
    """Write `data` to a stream's connection now, or False (nothing written) when it should go
    the usual way. A function on the transport itself, not an object wrapping it: one fan-out
    touches this for thousands of streams, and each object more is a cache miss more."""
    if transport.is_closing() or transport.get_write_buffer_size() > _MAX_UNSENT:
        return False
    transport.write(data)
    return True


class FindConnection:
    """ASGI middleware, outermost: a request served over HTTP/1.1 by our own Hypercorn workers
    finds the transport of its connection (before a proxy's headers change the scope's client)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # GET only: Hypercorn sends no body for HEAD, and a chunk written past it would be read
        # as the start of the connection's next response.
        if (
            scope["type"] == "http"
            and scope.get("method") == "GET"
            and scope.get("http_version") == "1.1"
            and _transports
            and not scope.get(MOUNTED)
        ):
            client, server = scope.get("client"), scope.get("server")
            if client and server:
                transport = _transports.get((tuple(client), tuple(server)))
                if transport is not None:
                    scope[_SCOPE_KEY] = transport
        await self.app(scope, receive, send)


def transport_for(scope: Any) -> asyncio.WriteTransport | None:
    """The transport of the request's connection, if the hub may write to it (FindConnection)."""
    transport: asyncio.WriteTransport | None = scope.get(_SCOPE_KEY)
    return transport
