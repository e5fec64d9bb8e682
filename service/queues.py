"""How many messages wait in each queue the workers consume, asked of the broker itself.

A passive declare answers with the queue's message count on every kombu transport (Redis sums its
priority lists; AMQP asks the server). Brokers are synchronous here, so it runs on the executor,
with a short cache: a dashboard polling and a scrape in the same second cost one round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from celery import Celery

_CACHE_SECONDS = 1.0
_TIMEOUT_SECONDS = 3.0


def _depths(celery: Celery, names: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        for name in names:
            # A channel each: a refused passive declare closes its channel on AMQP.
            channel = conn.channel()
            try:
                size = getattr(channel, "_size", None)
                if size is not None:
                    # kombu's Redis channel: its passive declare checks for the queue without
                    # the global key prefix and so never finds it; its size is what it reports.
                    depths[name] = int(size(name))
                else:
                    depths[name] = int(channel.queue_declare(name, passive=True).message_count)
            except Exception:
                # No such queue yet (Redis deletes an empty list): nothing waits in it.
                depths[name] = 0
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    return depths


class QueueDepths:
    def __init__(self, celery: Celery, executor: Executor):
        self.celery = celery
        self.executor = executor
        self._cached: tuple[float, tuple[str, ...], dict[str, int] | None] = (0.0, (), None)

    async def read(self, names: Iterable[str]) -> dict[str, int] | None:
        """Messages waiting per queue, or None when the broker does not answer in time."""
        wanted = tuple(sorted(set(names)))
        at, cached_names, cached = self._cached
        if cached is not None and cached_names == wanted and time.monotonic() - at < _CACHE_SECONDS:
            return cached
        loop = asyncio.get_running_loop()
        depths: Any
        try:
            depths = await asyncio.wait_for(
                loop.run_in_executor(self.executor, _depths, self.celery, list(wanted)),
                _TIMEOUT_SECONDS,
            )
        except Exception:
            depths = None
        self._cached = (time.monotonic(), wanted, depths)
        return depths
