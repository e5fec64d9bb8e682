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


class _Session:
    __slots__ = ("deadline", "subs")

    def __init__(self) -> None:
        # The earliest end among its cookie streams (None: only stream-token streams).
        self.deadline: float | None = None
        self.subs: dict[Subscription, float | None] = {}


class SessionStreams:
    def __init__(self, redis: Any, keys: Keys, clock: Callable[[], float]):
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._runner: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(s.subs) for s in self._sessions.values())

    def watch(self, caller: Caller, sub: Subscription) -> Callable[[], None]:
        """Keep `sub`'s stream until it ends or its session does; returns how to let it go."""
        session = caller.session
        if session is None:
            return _nothing
        deadline = None if caller.by_stream_token else caller.deadline
        entry = self._sessions.get(session)
        if entry is None:
            entry = self._sessions[session] = _Session()
        entry.subs[sub] = deadline
        if deadline is not None and (entry.deadline is None or deadline < entry.deadline):
            entry.deadline = deadline

        def forget() -> None:
            kept = self._sessions.get(session)
            if kept is not None:
                kept.subs.pop(sub, None)
                if not kept.subs:
                    del self._sessions[session]

        return forget

    def end(self, session: str) -> None:
        """End the session's streams in this process now (it was logged out here)."""
        entry = self._sessions.pop(session, None)
        if entry is not None:
            for sub in entry.subs:
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
        if not self._sessions:
            return
        now = self._clock()
        for session, entry in list(self._sessions.items()):
            if entry.deadline is not None and entry.deadline <= now:
                self._end_before(session, now)
        names = list(self._sessions)
        if not names:
            return
        revoked = await self._redis.mget([self._keys.revoked_session(s) for s in names])
        for session, mark in zip(names, revoked, strict=True):
            if mark is not None:
                self.end(session)

    def _end_before(self, session: str, now: float) -> None:
        """End the session's cookie streams, whose cookie ended; its stream-token streams go on."""
        entry = self._sessions[session]
        for sub, deadline in list(entry.subs.items()):
            if deadline is not None and deadline <= now:
                del entry.subs[sub]
                sub.close()
        if not entry.subs:
            del self._sessions[session]
        else:
            entry.deadline = None


def _nothing() -> None:
    pass
