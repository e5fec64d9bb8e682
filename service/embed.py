"""Serve taskstream inside another app, under a path prefix, or behind a proxy's root path.

Two ways, one rule: the app learns where it lives from ASGI's `root_path`, and every URL it
writes (links in snapshots, `Location`, stream links, problem types, the OpenAPI `servers`, the
pages' assets) starts with it.

- `mount(host, "/jobs")` puts the API and the dashboard at `/jobs/...` of an existing Quart app.
- `ROOT_PATH=/jobs` (or `hypercorn --root-path /jobs taskstream.web.asgi:app`) behind a proxy
  that forwards `/jobs/...` unchanged (its path still starts with `/jobs`).
- `TRUST_FORWARDED_PREFIX=true` behind a proxy that strips `/jobs` and sends
  `X-Forwarded-Prefix: /jobs` instead.

As ASGI servers (Hypercorn) and Quart read it, a scope's `path` is the full path, `root_path`
included; the app strips `root_path` itself.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Quart

from taskstream.settings import Settings
from taskstream.web.direct import MOUNTED

Scope = dict[str, Any]


def clean_prefix(prefix: str) -> str:
    """`/jobs` from `/jobs/` or `jobs`; a prefix of `/` or nothing is refused (serve the app)."""
    cleaned = "/" + prefix.strip("/")
    if cleaned == "/" or "//" in cleaned or any(c in cleaned for c in "?#"):
        raise ValueError(f"a mount prefix is a path such as '/jobs', not {prefix!r}")
    return cleaned


class PrefixDispatcher:
    """ASGI: requests under `prefix` go to `app` with the prefix added to their root path;
    everything else (and the lifespan) goes to `host`."""

    def __init__(self, host: Any, prefix: str, app: Any):
        self.host = host
        self.prefix = clean_prefix(prefix)
        self.app = app

    def _inside(self, scope: Scope) -> str | None:
        """The root path the mounted app sees, or None when the request is not for it."""
        root = scope.get("root_path", "")
        path: str = scope["path"]
        # The host may itself sit under a root path; the prefix comes after it.
        local = path[len(root) :] if root and path.startswith(root) else path
        if local == self.prefix or local.startswith(self.prefix + "/"):
            return root + self.prefix
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            root = self._inside(scope)
            if root is not None:
                await self.app({**scope, "root_path": root, MOUNTED: True}, receive, send)
                return
        await self.host(scope, receive, send)


_PREFIX = re.compile(r"^(/[^/?#\s]+)+$")


class RootPath:
    """ASGI, in front of the app: where the request says the app lives, and `/jobs` to `/jobs/`.

    With `trust_forwarded_prefix` (TRUST_FORWARDED_PREFIX), a proxy that strips the prefix before
    forwarding says which prefix in `X-Forwarded-Prefix`; it becomes part of the root path. Only
    for a proxy that sets (or removes) the header on every request: from anyone else it would
    let a client choose the links the API writes.

    A request for the root path itself answers 308 to it with a slash: Quart answers 404 for a
    path equal to its root path, and the prefix alone (what people type) would be a dead end.
    """

    def __init__(self, app: Any, trust_forwarded_prefix: bool = False):
        self.app = app
        self.trust_forwarded_prefix = trust_forwarded_prefix

    def _forwarded(self, scope: Scope) -> Scope:
        header = next((v for k, v in scope.get("headers", ()) if k == b"x-forwarded-prefix"), b"")
        prefix = header.decode("latin-1").strip().rstrip("/")
        if not _PREFIX.match(prefix):
            return scope  # none, or not a path: as if unsent
        root = scope.get("root_path", "")
        path: str = scope["path"]
        local = path[len(root) :] if root and path.startswith(root) else path
        return {**scope, "root_path": root + prefix, "path": root + prefix + local}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.trust_forwarded_prefix:
            scope = self._forwarded(scope)
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            query = scope.get("query_string", b"")
            location = (root + "/").encode() + (b"?" + query if query else b"")
            await send(
                {
                    "type": "http.response.start",
                    "status": 308,
                    "headers": [(b"location", location), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def mount(
    host: Quart, prefix: str, settings: Settings | None = None, *, handle_signals: bool = False
) -> Quart:
    """Serve taskstream's API and dashboard inside `host` at `prefix` (e.g. "/jobs").

    Returns the mounted taskstream app. It starts and stops with `host` (its Redis clients and
    its subscriber are opened when `host` starts serving). `handle_signals=True` ends open
    streams at SIGTERM so the server does not wait on them (their clients resume elsewhere with
    Last-Event-ID); it needs the app served in the process the signal reaches
    (`hypercorn --workers 0`: Hypercorn's worker processes never see it).
    """
    from taskstream.web.app import create_app

    app = create_app(settings, handle_signals=handle_signals)
    host.asgi_app = PrefixDispatcher(  # type: ignore[method-assign, assignment]
        host.asgi_app, prefix, app
    )
    host.before_serving(app.startup)
    host.after_serving(app.shutdown)
    return app
