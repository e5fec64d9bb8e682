"""Let an HTTP/2 stream's writes wait while its client grants no window, as HTTP/1.1's do.

Hypercorn (0.18.0, the latest release) keeps each HTTP/2 stream's unsent bytes in a buffer whose
writer waits above a high-water mark until the sender resumes it. The sender resumes it whenever
the piece it took was small, and with the client's flow-control window shut that piece is empty:
so every write resumes at once, the buffer grows by each event for as long as the connection
stays open, and nothing the service bounds ever sees a write that waits (the hub's per-stream
buffer, the stalled-client timeout of write_timeout.py). A client that stops reading over HTTP/2
cost memory without end (about 20 MB a minute for ten `GET /events` at a few hundred changes a
second) and was never dropped.

`install()` makes the sender resume the writer when what is left in the buffer is below the
low-water mark instead: a stream's writes then wait while its client takes nothing, with at most
the high-water mark (32 KB) held in Hypercorn's buffer, and a client that grants no window for
STREAM_WRITE_TIMEOUT_SECONDS is dropped as an HTTP/1.1 one is.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import h2


async def _pop(self: Any, max_length: int) -> bytes:
    """StreamBuffer.pop, resuming the writer once the buffer has drained below low water."""
    length = min(len(self.buffer), max_length)
    data = bytes(self.buffer[:length])
    del self.buffer[:length]
    if len(self.buffer) < h2.BUFFER_LOW_WATER:
        await self._paused.set()
    if len(self.buffer) == 0:
        await self._is_empty.set()
    return data


def install() -> None:
    """Use the pop above for every HTTP/2 stream of Hypercorn's. Call before serving."""
    h2.StreamBuffer.pop = _pop  # type: ignore[method-assign]
