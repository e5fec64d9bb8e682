"""Streams opened through a session end with it: at logout, and when the session runs out.

A request is checked once, when it arrives; a stream is one request that may stay open for
hours, and `GET /events` for ever. So each process keeps its open streams by the session they
came through (a cookie, or a stream token issued under one) and ends them: at once when this
process takes the logout, and otherwise at its next look, every `CHECK_SECONDS`, one Redis call
for all of its sessions (the revocations are in Redis, where every process reads them). A
cookie's stream also ends at the cookie's end. A stream token only opens its stream, as
documented: its stream runs to the task's end unless its session is revoked.

Streams opened with a bearer token have no session; they end with the process (the token is in
the process's configuration).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import RedisError

from taskstream.keys import Keys
from taskstream.web.auth import Caller
from taskstream.web.hub import Subscription

# How late another process's logout, or a session's end, may end a stream.
CHECK_SECONDS: Final = 2.0

log = logging.getLogger(__name__)


class SessionStreams:
    def __init__(self, redis: Any, keys: Keys, clock: Callable[[], float]):
        self._redis = redis
        self._keys = keys
        self._clock = clock
        # Per session, its open streams and when each ends with it: a cookie's stream at the
        # cookie's end, a stream token's never (None) but by revocation.
        self._sessions: dict[str, dict[Subscription, float | None]] = {}
        self._runner: asyncio.Task[None] | None = None

    def watch(self, caller: Caller, sub: Subscription) -> Callable[[], None]:
        """Keep `sub`'s stream until it ends or its session does; returns how to let it go."""
        session = caller.session
        if session is None:
            return _nothing
        subs = self._sessions.setdefault(session, {})
        subs[sub] = None if caller.by_stream_token else caller.deadline

        def forget() -> None:
            kept = self._sessions.get(session)
            if kept is not None:
                kept.pop(sub, None)
                if not kept:
                    del self._sessions[session]

        return forget

    def end(self, session: str) -> None:
        """End the session's streams in this process now (it was logged out here)."""
        for sub in self._sessions.pop(session, {}):
            sub.close()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="session-streams")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                await self.check()
            except RedisError as exc:
                # The next look tries again; meanwhile the streams wait, as they do for Redis.
                log.warning("could not look for ended sessions (%s)", type(exc).__name__)

    async def check(self) -> None:
        """End the streams of sessions that ran out or were revoked on any process."""
        now = self._clock()
        for session, subs in list(self._sessions.items()):
            for sub, ends in list(subs.items()):
                if ends is not None and ends <= now:
                    del subs[sub]
                    sub.close()
            if not subs:
                del self._sessions[session]
        names = list(self._sessions)
        if not names:
            return
        revoked = await self._redis.mget([self._keys.revoked_session(s) for s in names])
        for session, mark in zip(names, revoked, strict=True):
            if mark is not None:
                self.end(session)


def _nothing() -> None:
    pass
