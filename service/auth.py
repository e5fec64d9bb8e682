"""Who is calling: bearer tokens for scripts, a signed session cookie and one-task stream tokens
for browsers (EventSource cannot send headers). Off unless API_TOKENS is set.

Only SHA-256 digests of the tokens are kept. Session cookies and stream tokens are signed with
itsdangerous (a salt per kind, so one is never taken for the other; SECRET_KEY signs,
PREVIOUS_SECRET_KEYS still verify during a rotation) and carry an absolute expiry. Each is bound
to the token it came from by a fingerprint of that token's digest and admin flag: removing the
token from API_TOKENS, changing it, or demoting the caller invalidates every cookie and stream
token it gave. A session has an id; logout records it as revoked in Redis (until the cookie would
have expired anyway), which ends the cookie and the stream tokens issued under it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from itsdangerous import BadData, URLSafeSerializer
from quart import Request

from taskstream.settings import Settings
from taskstream.web.problems import Problem

SESSION_COOKIE = "taskstream_session"
_SESSION_SALT = "taskstream.session"
_STREAM_SALT = "taskstream.stream-token"


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool
    # Which token this caller presented, or whose cookie or stream token it holds (see above).
    fingerprint: str = field(default="", compare=False)
    # The session it came through (a cookie or a stream token issued under one), and its end.
    session: str | None = field(default=None, compare=False)
    deadline: float | None = field(default=None, compare=False)
    # Came with a stream token: it opens its stream, which then runs to the task's end unless
    # the session it was issued under is revoked (session_streams.py).
    by_stream_token: bool = field(default=False, compare=False)

    def sees(self, owner: str) -> bool:
        return self.admin or owner == self.name


# With authentication off, the one local user sees everything; tasks are owned by "".
LOCAL = Caller("", admin=True)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fingerprint(digest: str, admin: bool) -> str:
    # One-way and short: names the token (and its admin flag) without revealing its digest.
    return hashlib.sha256(f"taskstream-fingerprint:{digest}:{int(admin)}".encode()).hexdigest()[:32]


class Authenticator:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        self.enabled = settings.auth_enabled
        self.clock = clock
        self._stream_seconds = settings.stream_token_seconds
        self.session_seconds = settings.session_seconds
        self._tokens: dict[str, Caller] = {}
        for name, token, admin in settings.token_entries:
            digest = _digest(token)
            self._tokens[digest] = Caller(name, admin, _fingerprint(digest, admin))
        self._by_fingerprint = {c.fingerprint: c for c in self._tokens.values()}
        # itsdangerous signs with the last key and verifies with any of them.
        keys = [*reversed(settings.previous_secret_keys), settings.secret_key]
        self._sessions = URLSafeSerializer(keys, salt=_SESSION_SALT)
        self._streams = URLSafeSerializer(keys, salt=_STREAM_SALT)
        self._metrics = _digest(settings.metrics_token) if settings.metrics_token else None

    def check_metrics_reader(self, request: Request) -> Caller | None:
        """Let the scraper's METRICS_TOKEN or an admin through to /metrics; else 401 or 403.
        Returns the admin, whose session (if it came through one) is still to be checked
        against the revocations, or None for the metrics token or no authentication."""
        token = _bearer(request)
        if self._metrics is not None and token is not None:
            if hmac.compare_digest(_digest(token), self._metrics):
                return None
        if not self.enabled:
            if self._metrics is None:
                return None  # nothing to protect it with: open, as every route is
            raise unauthorized("Send `Authorization: Bearer <METRICS_TOKEN>`.",
                               invalid=token is not None)  # fmt: skip
        caller = self.caller(request)
        if not caller.admin:
            raise Problem(403, "Forbidden", "Metrics are for admins and the metrics token.",
                          kind="forbidden")  # fmt: skip
        return caller

    def session_cookie(self, caller: Caller) -> tuple[str, float]:
        """A cookie for `caller` and when it ends. Signed in with the token, a new session of
        SESSION_SECONDS; renewed with the cookie alone, the same session to the same end."""
        now = self.clock()
        if caller.session is None or caller.deadline is None:
            caller = replace(caller, session=secrets.token_urlsafe(16),
                             deadline=now + self.session_seconds)  # fmt: skip
        claims = {"n": caller.name, "f": caller.fingerprint, "s": caller.session,
                  "exp": caller.deadline}  # fmt: skip
        return self._sessions.dumps(claims), float(caller.deadline or now)

    def stream_token(self, caller: Caller, task_id: str) -> str:
        exp = self.clock() + self._stream_seconds
        if caller.deadline is not None:
            exp = min(exp, caller.deadline)  # never outlives the session it was issued under
        claims = {"n": caller.name, "f": caller.fingerprint, "s": caller.session, "t": task_id,
                  "exp": exp}  # fmt: skip
        return self._streams.dumps(claims)

    def session_of(self, request: Request) -> Caller | None:
        """The caller of the request's session cookie if it is valid (revocation aside)."""
        cookie = request.cookies.get(SESSION_COOKIE)
        return self._verify(self._sessions, cookie) if cookie else None

    def caller(self, request: Request, task_id: str | None = None) -> Caller:
        """The caller of `request`, or a 401 problem. `task_id`: the stream being opened.

        A caller that came through a session (`.session`) must still be checked against the
        revocations in Redis (security.py does)."""
        if not self.enabled:
            return LOCAL
        if request.headers.get("Authorization"):
            token = _bearer(request)
            found = self._tokens.get(_digest(token)) if token is not None else None
            if token is None:
                raise unauthorized("Only `Authorization: Bearer <token>` is accepted.")
            if found is None:
                raise unauthorized("The bearer token is not valid.", invalid=True)
            return found
        query_token = request.args.get("token")
        if query_token and task_id is not None:
            claims: dict[str, Any] = {}
            found = self._verify(self._streams, query_token, claims)
            if found is None or claims.get("t") != task_id:
                raise unauthorized(
                    "The stream token is not valid for this task, or expired.", invalid=True
                )
            return replace(found, by_stream_token=True)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            found = self._verify(self._sessions, cookie)
            if found is None:
                raise unauthorized(
                    "The session has ended or is no longer valid; sign in again.", invalid=True
                )
            return found
        raise unauthorized("Send `Authorization: Bearer <token>`.")

    def _verify(
        self, serializer: URLSafeSerializer, signed: str, out: dict[str, Any] | None = None
    ) -> Caller | None:
        """The caller a signed value names, if the signature holds (any key), it has not
        expired, and the token it came from is still configured as it was."""
        try:
            claims = serializer.loads(signed)
        except (BadData, UnicodeError, ValueError):
            return None
        if not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self.clock():
            return None
        current = self._by_fingerprint.get(str(claims.get("f")))
        if current is None or current.name != claims.get("n"):
            return None  # its token was removed, changed, or its admin flag changed
        session = claims.get("s")
        if out is not None:
            out.update(claims)
        if not isinstance(session, str):
            return current
        return replace(current, session=session, deadline=float(exp))


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def unauthorized(detail: str, *, invalid: bool = False) -> Problem:
    """A 401 with its challenge. `invalid`: a credential came and is not (or no longer) valid,
    which RFC 6750 names `invalid_token`, so a client knows to get a new one rather than retry;
    a request that brought none gets the bare challenge."""
    challenge = 'Bearer realm="taskstream"'
    if invalid:
        challenge += ', error="invalid_token"'
    return Problem(401, "Unauthorized", detail, kind="unauthorized",
                   headers={"WWW-Authenticate": challenge})  # fmt: skip
