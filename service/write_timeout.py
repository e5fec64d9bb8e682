"""Drop a stalled client: a write to it that does not finish in time ends its response.

Hypercorn's send waits while the socket's buffer is full, so a client that stops reading would
hold its stream (and its place in the hub) for ever. Its buffer in the hub is bounded already;
this bounds the time, so the process can forget the client.
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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            try:
                async with asyncio.timeout(self.seconds):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await self.app(scope, receive, timed_send)
        except ClientStalled:
            self.on_drop()
            log.info("dropped a client that stopped reading: %s", scope.get("path"))
