"""End a response when its client goes away, whatever the app was doing at that moment.

Hypercorn hears a client leave (a FIN before or after the first byte, a reset) and tells the app
with `http.disconnect`; Quart then cancels the request's task. That cancel can be lost: redis-py's
asyncio client (8.1.0 here) swallows a cancel that lands while a command is under way, and the
command returns as if nothing happened. A stream request cancelled while it reads the record
then carries on, starts its stream, and serves nobody for the life of the process: its stream
slots and hub subscription are never given back (ten such sockets filled
MAX_STREAMS_PER_PROCESS=10). A cancel that lands in the short moment after the route returned
and before the body is first read leaves the body unclosed too (until the garbage collector).

So, at the ASGI boundary, once `http.disconnect` has been received:
- nothing more is written, and writing a body part raises `ClientGone`, which ends the response;
- the task writing the response is cancelled again until it ends (a second cancel is not lost);
- when the request's ASGI call returns, the cleanups it registered run (`on_end`): a stream's
  slots and subscription are given back however the response ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# The scope key under which a request's cleanups wait for its end.
_CLEANUPS = "taskstream.on_end"
# How often the writer of a gone client's response is cancelled again while it runs on.
_RECANCEL_SECONDS = 0.5


class ClientGone(Exception):
    pass


def on_end(scope: Any, cleanup: Callable[[], None]) -> None:
    """Run `cleanup` when this request's ASGI call returns (see EndOnDisconnect). `scope` is the
    request's ASGI scope, a dict (typed by Quart as a TypedDict without this key)."""
    scope.setdefault(_CLEANUPS, []).append(cleanup)


class EndOnDisconnect:
    """ASGI middleware: after `http.disconnect`, the response ends and its cleanups run."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        gone = False
        writer: asyncio.Task[Any] | None = None
        timer: asyncio.TimerHandle | None = None

        def cancel_writer() -> None:
            nonlocal timer
            if writer is not None and not writer.done():
                writer.cancel()
            timer = loop.call_later(_RECANCEL_SECONDS, cancel_writer)

        async def watched_receive() -> dict[str, Any]:
            nonlocal gone, timer
            message = await receive()
            if message["type"] == "http.disconnect" and not gone:
                gone = True
                timer = loop.call_later(_RECANCEL_SECONDS, cancel_writer)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal writer
            if writer is None:  # one task writes a response: look it up once, not per write
                writer = asyncio.current_task()
            if not gone:
                await send(message)
            elif message["type"] == "http.response.body":
                raise ClientGone
            # The start of a response is let through unsent, so that the body is entered (and
            # closed when its first part fails) rather than left unclosed.

        try:
            await self.app(scope, watched_receive, guarded_send)
        except ClientGone:
            log.debug("client gone: %s", scope.get("path"))
        finally:
            if timer is not None:
                timer.cancel()
            for cleanup in scope.pop(_CLEANUPS, ()):
                cleanup()
