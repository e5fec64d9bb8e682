"""Who is calling: bearer tokens for scripts, a signed session cookie and one-task stream tokens
for browsers (EventSource cannot send headers). Off unless API_TOKENS is set.

Only SHA-256 digests of the tokens are kept. Session cookies and stream tokens are HMAC-signed
with SECRET_KEY and expire; a stream token opens one task's stream and nothing else, so the only
secret that ever appears in a URL is short-lived and narrow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from quart import Request

from taskstream.settings import Settings
from taskstream.web.problems import Problem

SESSION_COOKIE = "taskstream_session"


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool

    def sees(self, owner: str) -> bool:
        return self.admin or owner == self.name


# With authentication off, the one local user sees everything; tasks are owned by "".
LOCAL = Caller("", admin=True)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    def __init__(self, settings: Settings):
        self.enabled = settings.auth_enabled
        self._key = settings.secret_key.encode()
        self._stream_seconds = settings.stream_token_seconds
        self.session_seconds = settings.session_seconds
        self._tokens: dict[str, Caller] = {}
        for entry in filter(None, (e.strip() for e in settings.api_tokens.split(","))):
            parts = entry.split(":")
            if len(parts) not in (2, 3) or not parts[0] or len(parts[1]) < 8:
                raise ValueError("API_TOKENS entries are name:token[:admin], tokens of 8+ chars")
            admin = len(parts) == 3 and parts[2] == "admin"
            self._tokens[_digest(parts[1])] = Caller(parts[0], admin)
        self._metrics = _digest(settings.metrics_token) if settings.metrics_token else None

    def check_metrics_reader(self, request: Request) -> None:
        """Let the scraper's METRICS_TOKEN or an admin through to /metrics; else 401 or 403."""
        token = _bearer(request)
        if self._metrics is not None and token is not None:
            if hmac.compare_digest(_digest(token), self._metrics):
                return
        if not self.enabled:
            if self._metrics is None:
                return  # nothing to protect it with: open, as every route is
            raise _unauthorized("Send `Authorization: Bearer <METRICS_TOKEN>`.")
        if not self.caller(request).admin:
            raise Problem(403, "Forbidden", "Metrics are for admins and the metrics token.",
                          kind="forbidden")  # fmt: skip

    def _sign(self, claims: dict[str, object]) -> str:
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{signature}"

    def _verify(self, token: str, kind: str) -> dict[str, object] | None:
        try:
            body, signature = token.split(".", 1)
            expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
            if not hmac.compare_digest(signature, expected):
                return None
            claims = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        if claims.get("k") != kind or float(claims.get("exp", 0)) < time.time():
            return None
        return claims

    def session_cookie(self, caller: Caller) -> str:
        exp = time.time() + self.session_seconds
        return self._sign({"k": "session", "n": caller.name, "a": caller.admin, "exp": exp})

    def stream_token(self, caller: Caller, task_id: str) -> str:
        exp = time.time() + self._stream_seconds
        claims = {"k": "stream", "n": caller.name, "a": caller.admin, "t": task_id, "exp": exp}
        return self._sign(claims)

    def caller(self, request: Request, task_id: str | None = None) -> Caller:
        """The caller of `request`, or a 401 problem. `task_id`: the stream being opened."""
        if not self.enabled:
            return LOCAL
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            found = self._tokens.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
            if found is None:
                raise _unauthorized("The bearer token is not valid.")
            return found
        query_token = request.args.get("token")
        if query_token and task_id is not None:
            claims = self._verify(query_token, "stream")
            if claims is None or claims.get("t") != task_id:
                raise _unauthorized("The stream token is not valid for this task, or expired.")
            return Caller(str(claims["n"]), bool(claims["a"]))
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            claims = self._verify(cookie, "session")
            if claims is None:
                raise _unauthorized("The session has expired; sign in again.")
            return Caller(str(claims["n"]), bool(claims["a"]))
        raise _unauthorized("Send `Authorization: Bearer <token>`.")


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401, "Unauthorized", detail, kind="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="taskstream"'},
    )  # fmt: skip
