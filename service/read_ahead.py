"""Keep reading a connection while its response runs, so a client that leaves is heard.

Hypercorn (0.18.0, the latest release) stops reading a connection's socket while a response is
in flight and more bytes wait in its buffer: h11 answers PAUSED when a further request has come
in behind the current one (pipelining), and the protocol waits for the response to end before it
reads again. A client that pipelines a request behind a stream and then half-closes (FIN) is
never heard: the FIN stays unread, and writes to a half-closed socket do not fail, so the stream
lives for as long as the process. (Without anything queued behind it, Hypercorn does read on and
tells the app with `http.disconnect`.)

`install()` replaces the connection's read loop with one that reads on while the protocol
handles what it was given: bytes read meanwhile (the queued request) are handed over, in order,
once the response is done; an end-of-file or a reset is handed over as the connection's close,
which reaches the app as `http.disconnect` (see disconnects.py for what happens then). A request
that answers at once is still answered to a client that half-closed after sending it.
"""

from __future__ import annotations

import asyncio
import contextlib
from ssl import SSLError
from typing import Any

from hypercorn.asyncio import tcp_server
from hypercorn.events import Closed, RawData

from taskstream.web import direct

# Bytes read ahead while a response runs, beyond which reading waits for it (back-pressure on a
# client that pipelines without end).
_READ_AHEAD = 64 * 1024
_READ_ERRORS = (ConnectionError, OSError, SSLError)
# How long a request whose client went away may still take to finish its answer.
_GRACE_SECONDS = 0.5


async def _read_data(self: Any) -> None:
    """TCPServer._read_data, reading on while the protocol handles what it was given."""
    # The hub may write a stream's changes to this connection directly (see direct.py).
    with direct.Connection(self.writer):
        await _read_loop(self)


async def _read_loop(self: Any) -> None:
    ahead = bytearray()
    while True:
        if ahead:
            data = bytes(ahead)
            ahead.clear()
        else:
            reading = self.reader.read(tcp_server.MAX_RECV)
            timeout = self.config.read_timeout
            try:
                # (Not through wait_for without a timeout: a stream's connection waits here for
                # as long as it lasts, and every object kept meanwhile is kept per stream.)
                data = await (reading if timeout is None else asyncio.wait_for(reading, timeout))
            except (*_READ_ERRORS, TimeoutError):
                break
            if not data:
                break
        handling = asyncio.ensure_future(self.protocol.handle(RawData(data)))
        if not await _read_ahead(self.reader, handling, ahead):
            await _hang_up(self.protocol, handling)
            return
        handling.result()
        del handling  # done: not kept while the next read waits
    await self.protocol.handle(Closed())


async def _read_ahead(
    reader: asyncio.StreamReader, handling: asyncio.Future, ahead: bytearray
) -> bool:
    """Read into `ahead` until `handling` is done; False if the client went away meanwhile."""
    while not handling.done():
        if len(ahead) >= _READ_AHEAD:
            await asyncio.wait({handling})
            break
        reading = asyncio.ensure_future(reader.read(tcp_server.MAX_RECV))
        await asyncio.wait({handling, reading}, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            # Cancelling a read loses nothing: unread bytes stay in the reader's buffer.
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            continue
        try:
            chunk = reading.result()
        except _READ_ERRORS:
            chunk = b""
        if not chunk:
            return False
        ahead += chunk
    return True


async def _hang_up(protocol: Any, handling: asyncio.Future) -> None:
    """The client is gone while `handling` runs: let a quick answer finish, else close."""
    while not handling.done():
        # A request that answers at once is answered (what was sent may still be read); a
        # response still running after this grace is a stream, or slow, and nobody will read it.
        await asyncio.wait({handling}, timeout=_GRACE_SECONDS)
        if handling.done():
            break
        # The close reaches the app as `http.disconnect` once the request has reached it; the
        # protocol, paused until the response ends, stops waiting. (Until the request has
        # reached the app, the cancel may be swallowed on the way: then try again.)
        await protocol.handle(Closed())
        handling.cancel()
        await asyncio.wait({handling}, timeout=_GRACE_SECONDS)
    if not handling.cancelled():
        handling.exception()  # retrieved: a failure of a request nobody waits for is no news
    await protocol.handle(Closed())


def install() -> None:
    """Use the read loop above for every connection of Hypercorn's asyncio workers (the uvloop
    worker class included). Call before serving: `service/asgi.py` does."""
    tcp_server.TCPServer._read_data = _read_data  # type: ignore[method-assign]
