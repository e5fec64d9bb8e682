"""The service's HTTP API as method calls, sync (`Client`) and async (`AsyncClient`).

Every call returns the JSON the service answered (snapshots are dicts, with `links`), and every
error answer raises `ProblemError` carrying its RFC 9457 problem details. No answer at all (the
service is down, the connection broke) raises `Unreachable`. `follow()` is in follow.py.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse, connect_sse

from taskstream.client import __version__
from taskstream.client.errors import NotTheService, ProblemError, Unreachable, describe, safe_url
from taskstream.client.follow import (
    AsyncFollow,
    Follow,
    FollowOptions,
    Plan,
    Snapshot,
)

# The service sends a keepalive at least every 15 s, so a stream silent for three of those is dead.
STREAM_TIMEOUT = httpx.Timeout(10, read=45)
# The service answers a stream's headers at once (a subscribe and a read): a server that takes
# the connection and says nothing for this long is hung, and waiting 45 s for it would overshoot
# a follower's patience.
STREAM_HEADERS_WAIT = 10.0
DEFAULT_TIMEOUT = 10.0
# Each follow holds a connection for as long as its task runs: httpx's default of 100 in all
# made a client's 101st follow (and any call beside 100 follows) fail as if the service were
# down. The service bounds the streams a caller may hold (MAX_STREAMS_PER_CALLER).
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=20)


@dataclass(frozen=True)
class Page:
    """One page of `list()`: snapshots, newest first, and the cursor of the next page (None at
    the end)."""

    items: builtins.list[Snapshot]
    next: str | None


def task_path(task_id: str) -> str:
    # An id with a slash or a question mark must not reach another route, nor one of dots,
    # which a URL takes as "this folder" or "the one above" (`.` would read the task list).
    segment = quote(task_id, safe="")
    if segment in ("", ".", ".."):
        segment = segment.replace(".", "%2E") or "%20"
    return f"/tasks/{segment}"


def _answer(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ProblemError.from_response(response)
    if response.status_code not in (204, 304) and (
        response.is_redirect or "json" not in response.headers.get("content-type", "")
    ):
        raise NotTheService.of(response)
    return response


def _conditional(response: httpx.Response, etag: str | None) -> tuple[Snapshot | None, str | None]:
    if response.status_code == 304:
        return None, etag
    return response.json(), response.headers.get("ETag")


def _names(value: str | Iterable[str] | None) -> builtins.list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else builtins.list(value)


def _list_params(
    state: str | Iterable[str] | None,
    task: str | Iterable[str] | None,
    limit: int | None,
    cursor: str | None,
) -> builtins.list[tuple[str, str]]:
    params = [("state", s) for s in _names(state)] + [("task", t) for t in _names(task)]
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor:
        params.append(("cursor", cursor))
    return params


def _page(response: httpx.Response) -> Page:
    body = response.json()
    return Page(items=body.get("items") or [], next=body.get("next"))


def _headers(token: str | None, user_agent: str | None) -> dict[str, str]:
    headers = {"User-Agent": user_agent or f"taskstream-client/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class _Base:
    def __init__(self, url: str, token: str | None, user_agent: str | None):
        # httpx joins request paths onto the base URL's path, so a mounted API
        # (`http://host/jobs`) is called as `http://host/jobs/tasks`.
        self.url = url.rstrip("/")
        self._headers = _headers(token, user_agent)

    def _unreachable(self, exc: Exception) -> Unreachable:
        return Unreachable(f"cannot reach {safe_url(self.url)} ({describe(exc)})")


class Client(_Base):
    """A taskstream service at `url` (with its mount prefix, if any), for synchronous code.

    ```python
    with Client("http://localhost:8000") as client:
        snap = client.submit("sleep", seconds=2, steps=4)
        for snap in client.follow(snap["id"]):
            print(snap["state"], snap["progress"])
    ```

    `token` is sent as a bearer token (for a service with API_TOKENS set). `transport`, `sleep`
    and `clock` are for tests: an httpx transport, and the follower's waits and time source.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        user_agent: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(url, token, user_agent)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers=self._headers,
            transport=transport,
            limits=_LIMITS,
        )
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return _answer(response)

    def submit(self, task: str, /, *args: Any, **kwargs: Any) -> Snapshot:
        """Submit `task(*args, **kwargs)`; its first snapshot (`PENDING`, `seq` 1)."""
        body = {"task": task, "args": builtins.list(args), "kwargs": kwargs}
        return self._call("POST", "/tasks", json=body).json()

    def get(self, task_id: str) -> Snapshot:
        """The task's snapshot as it stands."""
        return self._call("GET", task_path(task_id)).json()

    def poll(self, task_id: str, etag: str | None = None) -> tuple[Snapshot | None, str | None]:
        """The snapshot and its ETag; `(None, etag)` while it has not changed since `etag`."""
        headers = {"If-None-Match": etag} if etag else {}
        return _conditional(self._call("GET", task_path(task_id), headers=headers), etag)

    def cancel(self, task_id: str) -> Snapshot:
        """Cancel the task; its `REVOKED` snapshot. A finished task raises a 409 ProblemError."""
        return self._call("DELETE", task_path(task_id)).json()

    def task_types(self) -> builtins.list[dict[str, Any]]:
        """The submittable tasks, each with its name, description and argument schema."""
        return self._call("GET", "/task-types").json()

    def follow(
        self,
        task_id: str,
        *,
        after: int | None = None,
        options: FollowOptions | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> Follow:
        """Every change of the task, as an iterator of snapshots that ends after the terminal one:
        from its current snapshot, or with `after`, every retained change after that seq (0: from
        the first). See `Follow`."""
        plan = Plan(options or FollowOptions(), after, self._clock)
        return Follow(
            plan, _SyncStream(self, task_id, self._sleep, on_notice, plan.options.patience)
        )

    def list(
        self,
        *,
        state: str | Iterable[str] | None = None,
        task: str | Iterable[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Recent tasks, newest first, optionally only in these states or of these names."""
        params = _list_params(state, task, limit, cursor)
        return _page(self._call("GET", "/tasks", params=params))


class AsyncClient(_Base):
    """`Client` for asyncio: the same methods, awaited; `follow()` is an async iterator.

    ```python
    async with AsyncClient("http://localhost:8000") as client:
        snap = await client.submit("sleep", seconds=2, steps=4)
        async for snap in client.follow(snap["id"]):
            print(snap["state"])
    ```
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(url, token, user_agent)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            headers=self._headers,
            transport=transport,
            limits=_LIMITS,
        )
        self._sleep = sleep
        self._clock = clock

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return _answer(response)

    async def submit(self, task: str, /, *args: Any, **kwargs: Any) -> Snapshot:
        body = {"task": task, "args": builtins.list(args), "kwargs": kwargs}
        return (await self._call("POST", "/tasks", json=body)).json()

    async def get(self, task_id: str) -> Snapshot:
        return (await self._call("GET", task_path(task_id))).json()

    async def poll(
        self, task_id: str, etag: str | None = None
    ) -> tuple[Snapshot | None, str | None]:
        headers = {"If-None-Match": etag} if etag else {}
        return _conditional(await self._call("GET", task_path(task_id), headers=headers), etag)

    async def cancel(self, task_id: str) -> Snapshot:
        return (await self._call("DELETE", task_path(task_id))).json()

    async def task_types(self) -> builtins.list[dict[str, Any]]:
        return (await self._call("GET", "/task-types")).json()

    def follow(
        self,
        task_id: str,
        *,
        after: int | None = None,
        options: FollowOptions | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> AsyncFollow:
        """As `Client.follow`, as an async iterator: `async for snap in client.follow(id)`."""
        plan = Plan(options or FollowOptions(), after, self._clock)
        return AsyncFollow(
            plan, _AsyncStream(self, task_id, self._sleep, on_notice, plan.options.patience)
        )

    async def list(
        self,
        *,
        state: str | Iterable[str] | None = None,
        task: str | Iterable[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        params = _list_params(state, task, limit, cursor)
        return _page(await self._call("GET", "/tasks", params=params))


def _last_event_id(last_event_id: int | None) -> dict[str, str]:
    return {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}


def _opening_timeout(patience: float) -> httpx.Timeout:
    """Until the stream's headers arrive: no longer than the follower's patience either."""
    return httpx.Timeout(STREAM_TIMEOUT.connect, read=min(STREAM_HEADERS_WAIT, patience))


def _wait_for_events(response: httpx.Response) -> None:
    """Once the headers are in, reads wait for the events and keepalives (STREAM_TIMEOUT)."""
    # httpcore reads the request's timeouts at each read of the body, not once when sending.
    timeouts = response.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = STREAM_TIMEOUT.read


class _SyncStream:
    """The follower's I/O for `Client`: one event stream at a time, polls and waits."""

    def __init__(
        self,
        client: Client,
        task_id: str,
        sleep: Callable[[float], None],
        on_notice: Callable[[str], None] | None,
        patience: float,
    ):
        self.client, self.task_id, self.sleep = client, task_id, sleep
        self.on_notice = on_notice
        self.patience = patience
        self._open: AbstractContextManager[Any] | None = None
        self._events: Any = None

    def open(self, last_event_id: int | None) -> int:
        self.close()
        opening = connect_sse(
            self.client._http, "GET", task_path(self.task_id) + "/events",
            headers=_last_event_id(last_event_id), timeout=_opening_timeout(self.patience),
        )  # fmt: skip
        source = opening.__enter__()
        self._open = opening
        response = source.response
        _wait_for_events(response)
        if response.status_code >= 400:
            response.read()
            self.close()
            raise ProblemError.from_response(response)
        self._events = source.iter_sse()
        return response.status_code

    def read(self) -> Any:
        return next(self._events, None)

    def close(self) -> None:
        opening, self._open, self._events = self._open, None, None
        if opening is not None:
            opening.__exit__(None, None, None)

    def fetch(self, etag: str | None) -> tuple[Snapshot | None, str | None]:
        return self.client.poll(self.task_id, etag)


class _AsyncStream:
    """The follower's I/O for `AsyncClient`."""

    def __init__(
        self,
        client: AsyncClient,
        task_id: str,
        sleep: Callable[[float], Awaitable[None]] | None,
        on_notice: Callable[[str], None] | None,
        patience: float,
    ):
        self.client, self.task_id, self._sleep = client, task_id, sleep
        self.on_notice = on_notice
        self.patience = patience
        self._open: AbstractAsyncContextManager[Any] | None = None
        self._events: Any = None

    async def sleep(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(seconds)
        else:
            await asyncio.sleep(seconds)

    async def open(self, last_event_id: int | None) -> int:
        await self.close()
        opening = aconnect_sse(
            self.client._http, "GET", task_path(self.task_id) + "/events",
            headers=_last_event_id(last_event_id), timeout=_opening_timeout(self.patience),
        )  # fmt: skip
        source = await opening.__aenter__()
        self._open = opening
        response = source.response
        _wait_for_events(response)
        if response.status_code >= 400:
            await response.aread()
            await self.close()
            raise ProblemError.from_response(response)
        self._events = source.aiter_sse()
        return response.status_code

    async def read(self) -> Any:
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            return None

    async def close(self) -> None:
        opening, self._open, self._events = self._open, None, None
        if opening is not None:
            await opening.__aexit__(None, None, None)

    async def fetch(self, etag: str | None) -> tuple[Snapshot | None, str | None]:
        return await self.client.poll(self.task_id, etag)
