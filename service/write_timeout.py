"""Drop a stalled client: a write to it that does not finish in time ends its response.

Hypercorn's send waits while the socket's buffer is full, so a client that stops reading would
hold its stream (and its place in the hub) for ever. Its buffer in the hub is bounded already;
this bounds the time, so the process can forget the client.

Every write of every stream passes through here, and almost every one finishes at once: so a write
only notes when it began, and one sweeper per process, a few times a second, cancels the writes
that have been waiting longer than allowed. A timer per write (asyncio.timeout) cost a tenth of the
fan-out of a change to thousands of streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ClientStalled(Exception):
    pass


class WriteTimeout:
    """ASGI middleware: a response body write that takes longer than `seconds` ends the response."""

    def __init__(self, app: Any, seconds: float, on_drop: Callable[[], None]):
        self.app = app
        self.seconds = seconds
        self.on_drop = on_drop
        # The task of each write under way, and when that write began (loop time).
        self._writing: dict[asyncio.Task[Any], float] = {}
        self._stalled: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep(), name="write-timeout")
        writing = self._writing
        stalled = self._stalled
        writer: asyncio.Task[Any] | None = None

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal writer
            if message["type"] != "http.response.body":
                await send(message)
                return
            task = writer
            if task is None:  # one task writes a response's body: look it up once
                task = writer = asyncio.current_task()
                assert task is not None
            writing[task] = loop.time()
            try:
                await send(message)
            except asyncio.CancelledError:
                if task not in stalled:
                    raise
                stalled.discard(task)
                task.uncancel()
                raise ClientStalled from None
            finally:
                writing.pop(task, None)

        try:
            await self.app(scope, receive, timed_send)
        except ClientStalled:
            self.on_drop()
            log.info("dropped a client that stopped reading: %s", scope.get("path"))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.seconds / 4)
        while True:
            await asyncio.sleep(interval)
            deadline = loop.time() - self.seconds
            for task, began in list(self._writing.items()):
                if began <= deadline and task not in self._stalled:
                    self._stalled.add(task)
                    task.cancel()
