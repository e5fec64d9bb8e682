"""How every part reaches Redis: one place that knows REDIS_URL and Redis Sentinel.

With REDIS_SENTINELS set, each client asks the sentinels for the current master of
REDIS_SENTINEL_MASTER on every new connection, so after a failover the next connection (each
client reconnects when its socket breaks) reaches the new master. REDIS_URL then still gives the
master's password, database and TLS options; its host and port are ignored.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import redis
import redis.asyncio as aioredis
from kombu.transport import redis as kombu_redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import Sentinel

from taskstream.settings import Settings

# How long to wait for a sentinel's answer before asking the next one.
_SENTINEL_TIMEOUT = 1.0


class _BlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """The master's connections, a fixed number of them, callers waiting for a free one."""


def _master_options(url: str) -> dict[str, Any]:
    """REDIS_URL's connection options without its address (the sentinels give that)."""
    options = dict(aioredis.connection.parse_url(url))
    for name in ("host", "port", "path", "connection_class"):
        options.pop(name, None)
    if urlsplit(url).scheme == "rediss":
        options["ssl"] = True
    return options


def sync_client(settings: Settings, **options: Any) -> redis.Redis:
    """A synchronous client (the worker's); `options` as for redis.Redis."""
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    master = _master_options(settings.redis_url)
    sentinel = Sentinel(
        list(settings.redis_sentinels),
        sentinel_kwargs={"socket_timeout": _SENTINEL_TIMEOUT},
        **master,
    )
    return sentinel.master_for(settings.redis_sentinel_master, **options)


def async_client(settings: Settings, *, max_connections: int | None = None, **options: Any) -> Any:
    """An asyncio client (the web's). With `max_connections`, callers wait for a free one."""
    if not settings.redis_sentinels:
        if max_connections is None:
            return aioredis.Redis.from_url(settings.redis_url, **options)
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_connections, **options
        )
        return aioredis.Redis(connection_pool=pool)
    master = _master_options(settings.redis_url)
    sentinel = AsyncSentinel(
        list(settings.redis_sentinels),
        sentinel_kwargs={"socket_timeout": _SENTINEL_TIMEOUT},
        **master,
    )
    if max_connections is None:
        return sentinel.master_for(settings.redis_sentinel_master, **options)
    return sentinel.master_for(
        settings.redis_sentinel_master,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        **options,
    )


async def discard(client: Any, connection: Any) -> None:
    """Close a connection taken from `client`'s pool to be read by a protocol of its own (the
    hub's subscription, the pipelined script calls) and free its place in the pool. It is done
    with: an error while closing it changes nothing."""
    try:
        await connection.disconnect()
        await client.connection_pool.release(connection)
    except Exception:
        pass


_kombu_connparams = kombu_redis.Channel._connparams


def _connparams_unless_closed(self: Any, asynchronous: bool = False) -> dict[str, Any]:
    if self.connection.client is None:
        raise redis.ConnectionError("the broker connection is closed")
    return _kombu_connparams(self, asynchronous)


def guard_closed_broker_connections() -> None:
    """kombu 5.7 closes a channel that lost Redis by putting its unacknowledged messages back
    through a new pool, made from a connection that is already gone: the AttributeError that
    raises is "unrecoverable" to Celery and ends the worker (the soak lost both its workers to a
    Redis restart; Sentinel failovers did the same). Raised as a connection error instead, it is
    ignored there, and the worker reconnects as it should. Applies to kombu's Redis channels
    (Sentinel's too) in this process; calling it again does nothing."""
    kombu_redis.Channel._connparams = _connparams_unless_closed  # type: ignore[method-assign]


def broker(settings: Settings) -> tuple[str, str | None, dict[str, Any]]:
    """Celery's broker URL, transport (None: the URL's) and the transport options it needs
    beyond the common ones."""
    if not settings.redis_sentinels:
        return settings.redis_url, None, {}
    parts = urlsplit(settings.redis_url)
    auth = ""
    if parts.password:
        auth = f"{quote(parts.username or '', safe='')}:{quote(parts.password, safe='')}@"
    db = parts.path or "/0"
    # kombu's sentinel transport: one URL per sentinel, tried in turn; the master by name.
    url = ";".join(f"sentinel://{auth}{host}:{port}{db}" for host, port in settings.redis_sentinels)
    return (
        url,
        "sentinel",
        {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": {"socket_timeout": _SENTINEL_TIMEOUT},
        },
    )
