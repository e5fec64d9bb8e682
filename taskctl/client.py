"""The service's HTTP API as method calls; its error answers and silences as exceptions."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, connect_sse

from taskstream.client import __version__

# The service sends a keepalive at least every 15 s, so a stream silent for three of those is dead.
_STREAM_TIMEOUT = httpx.Timeout(10, read=45)
_TIMEOUT = httpx.Timeout(10)


class ServiceError(Exception):
    """The service answered with an error status; `problem` is its problem-details body."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {self.title}")

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or httpx.codes.get_reason_phrase(self.status))

    @property
    def client_error(self) -> bool:
        """Asking again will not help (a 4xx other than the ones that mean "later")."""
        return 400 <= self.status < 500 and self.status not in (408, 425, 429)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ServiceError:
        problem: dict[str, Any] = {}
        content_type = response.headers.get("content-type", "")
        if "json" in content_type:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                problem = body
        if not problem:
            # Not the service's own answer (a proxy's page, say): keep a little of it to show.
            text = response.text.strip()
            problem = {"detail": text[:300]} if text else {}
        return cls(response.status_code, problem)


class Unreachable(Exception):
    """No usable answer from the service at all."""


def describe(exc: BaseException) -> str:
    """A short reason for a transport failure, for one line on stderr."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _path(task_id: str) -> str:
    # An id with a slash or a question mark must not reach another route.
    return f"/tasks/{quote(task_id, safe='')}"


TOKEN_VARIABLE = "TASKSTREAM_TOKEN"


class Api:
    """One connection pool to one service; every call raises ServiceError or Unreachable."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        # A deployment with authentication on wants a bearer token (TASKSTREAM_TOKEN).
        token = token if token is not None else os.environ.get(TOKEN_VARIABLE, "")
        headers = {"User-Agent": f"taskctl/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, timeout=_TIMEOUT, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.base_url} ({describe(exc)})") from None
        if response.status_code >= 400:
            raise ServiceError.from_response(response)
        return response

    def submit(self, task: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        body = {"task": task, "args": args, "kwargs": kwargs}
        return self._call("POST", "/tasks", json=body).json()

    def get(
        self, task_id: str, etag: str | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The snapshot and its ETag; (None, etag) when it has not changed since `etag`."""
        headers = {"If-None-Match": etag} if etag else {}
        response = self._call("GET", _path(task_id), headers=headers)
        if response.status_code == 304:
            return None, etag
        return response.json(), response.headers.get("ETag")

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._call("DELETE", _path(task_id)).json()

    def list(
        self,
        states: list[str],
        tasks: list[str],
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params: list[tuple[str, str]] = [("state", s) for s in states]
        params += [("task", t) for t in tasks]
        if limit is not None:
            params.append(("limit", str(limit)))
        if cursor:
            params.append(("cursor", cursor))
        return self._call("GET", "/tasks", params=params).json()

    def types(self) -> builtins.list[dict[str, Any]]:  # `list` here is the method above
        return self._call("GET", "/task-types").json()

    @contextmanager
    def events(self, task_id: str, last_seq: int) -> Iterator[EventSource]:
        """Open the task's event stream after `last_seq` (0: from the current snapshot).

        The caller checks the status (200 stream, 204 ended); transport errors surface as httpx's
        own, because a stream can fail at any point of its reading, not only here.
        """
        headers = {"Last-Event-ID": str(last_seq)} if last_seq else {}
        with connect_sse(
            self._http, "GET", f"{_path(task_id)}/events", headers=headers, timeout=_STREAM_TIMEOUT
        ) as source:
            yield source
