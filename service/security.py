"""The request guard: CORS, cross-site refusal, authentication, and the limits that hold under
abuse (submissions per caller, open streams per caller and per process). See docs/security.md.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from quart import Quart, Response, current_app, g, request

from taskstream.keys import Keys
from taskstream.web.auth import LOCAL, Authenticator, Caller, unauthorized
from taskstream.web.problems import Problem
from taskstream.web.responses import bodiless

# Endpoints anyone may reach: health for orchestrators, and the pages (which then sign in). Not
# the API's description: it names the deployment's submittable tasks, as GET /task-types does.
PUBLIC = {"tasks.healthz", "tasks.readyz", "tasks.dashboard", "docs", "static"}
# Orchestrators probe by address: health answers whatever the Host.
_PROBES = {"tasks.healthz", "tasks.readyz"}
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID, If-None-Match"


def current_caller() -> Caller:
    return getattr(g, "caller", LOCAL)


class StreamSlots:
    """Open streams per caller and per process, so one caller cannot take a process's sockets.

    Refusals are 429 (per caller) or 503 (per process) problem answers: EventSource stops on a
    non-200 answer rather than reconnecting, so a refused browser does not retry in a loop.
    """

    def __init__(self, per_caller: int, per_process: int):
        self.per_caller = per_caller
        self.per_process = per_process
        self.open: Counter[str] = Counter()
        self.total = 0

    def acquire(self, caller: Caller) -> str:
        """Take a slot for `caller`'s new stream, or refuse; returns the key to release."""
        if self.total >= self.per_process:
            raise Problem(503, "Too many streams", "This process has no room for another stream.",
                          kind="too-many-streams", headers={"Retry-After": "10"})  # fmt: skip
        # Callers are known only with authentication on; without it (one local user, or a
        # benchmark's thousands of streams from one address) only the per-process bound holds.
        key = caller.name
        if key and self.open[key] >= self.per_caller:
            raise Problem(429, "Too many streams",
                          f"At most {self.per_caller} open streams per caller; close one first.",
                          kind="too-many-streams", headers={"Retry-After": "10"})  # fmt: skip
        self.open[key] += 1
        self.total += 1
        return key

    def release(self, key: str) -> None:
        self.total -= 1
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


def _same_origin(origin: str) -> bool:
    try:
        return urlsplit(origin).netloc == request.host
    except ValueError:  # not a URL (`http://[`): no page of this site sent it
        return False


def _services() -> Any:
    # services.py imports this module: reach the per-process objects through the app instead.
    return current_app.extensions["taskstream"]


async def _revoked(session: str) -> bool:
    svc = _services()
    return bool(await svc.redis.exists(svc.keys.revoked_session(session)))


async def revoke_session(caller: Caller) -> None:
    """Logout: the session's cookie, and the stream tokens issued under it, stop working."""
    if caller.session is None or caller.deadline is None:
        return
    svc = _services()
    ttl = max(1, int(caller.deadline - svc.clock()) + 1)
    await svc.redis.set(svc.keys.revoked_session(caller.session), "1", ex=ttl)
    # Its open streams here end now; other processes' at their next look (session_streams.py).
    svc.sessions.end(caller.session)


def _session_ended() -> Problem:
    return unauthorized("This session was ended; sign in again.", invalid=True)


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def install(
    app: Quart,
    auth: Authenticator,
    cors_origins: tuple[str, ...],
    hosts: frozenset[str] | None = None,
) -> None:
    allowed = set(cors_origins)

    @app.before_request
    async def _guard() -> Response | None:
        # A DNS-rebinding page reaches the service under its own name: answer only to the names
        # allowed (ALLOWED_HOSTS; with authentication off, loopback ones by default).
        if hosts is not None and request.endpoint not in _PROBES:
            if _host_name(request.host) not in hosts:
                raise Problem(400, "Host not allowed",
                              "This service does not answer to that Host; see ALLOWED_HOSTS.",
                              kind="host-not-allowed")  # fmt: skip
        origin = request.headers.get("Origin")
        cross_site = origin is not None and not _same_origin(origin)
        if request.method == "OPTIONS" and cross_site:
            if origin not in allowed:
                raise Problem(403, "Origin not allowed", "This origin may not call the API.",
                              kind="origin-not-allowed")  # fmt: skip
            response = bodiless(204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
            response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            return response
        if request.method in _UNSAFE and cross_site and origin not in allowed:
            # Also what stops a forged cross-site request riding on a session cookie.
            raise Problem(403, "Origin not allowed",
                          "Cross-site requests are accepted only from CORS_ORIGINS.",
                          kind="origin-not-allowed")  # fmt: skip
        if request.endpoint in PUBLIC or request.endpoint is None:
            return None
        if request.endpoint == "tasks.metrics":
            reader = auth.check_metrics_reader(request)
            if reader is not None and reader.session is not None and await _revoked(reader.session):
                raise _session_ended()
            return None
        task_id = (request.view_args or {}).get("task_id")
        stream = request.endpoint == "tasks.task_events"
        caller = auth.caller(request, task_id if stream else None)
        if caller.session is not None and await _revoked(caller.session):
            raise _session_ended()
        g.caller = caller
        return None

    @app.after_request
    async def _headers(response: Response) -> Response:
        # Every answer: no type sniffing, no framing (clickjacking), and pages that run only
        # the service's own scripts and styles, none inline (the pages keep theirs in static/).
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.after_request
    async def _cors(response: Response) -> Response:
        if not allowed:
            return response
        # Every answer, not only an allowed origin's: the answer without the CORS headers is as
        # much a choice made on Origin, and a cache must not give it to an allowed origin.
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = "Location, ETag, Retry-After"
        return response


# A sliding window, in one atomic step: drop the submissions older than the window, and admit
# this one only if fewer than the limit remain. Returns 0 when admitted, else the time at which
# the oldest one leaves the window. Unlike fixed windows, no 2x burst across a window's edge.
_SLIDING_WINDOW = """
local key, now, window, limit, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return tostring(tonumber(oldest[2]) + window)
end
redis.call('ZADD', key, now, member)
redis.call('EXPIRE', key, math.ceil(window) + 1)
return 0
"""


async def check_submission_rate(
    run_script: Callable[[str, list[str], list[Any]], Awaitable[Any]],
    keys: Keys,
    limit: int,
    window: int,
    now: float,
) -> None:
    """At most `limit` submissions per caller in any `window` seconds, counted in Redis (one Lua
    script, run by Services.run_script) so it holds across web processes. `now` comes from the
    app's clock (Services.clock), which tests set instead of waiting."""
    if limit <= 0:
        return
    caller = current_caller()
    who = caller.name or f"addr:{request.remote_addr}"
    member = f"{now!r}:{secrets.token_hex(4)}"
    free_at = await run_script(
        _SLIDING_WINDOW, [keys.rate(who, window)], [repr(now), window, limit, member]
    )
    if float(free_at) > 0:
        retry_after = max(1, math.ceil(float(free_at) - now))
        raise Problem(429, "Too many submissions",
                      f"At most {limit} submissions per {window} s; try again later.",
                      kind="rate-limited", headers={"Retry-After": str(retry_after)})  # fmt: skip
