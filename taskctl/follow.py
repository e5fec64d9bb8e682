"""Follow one task to its end: stream, resume after drops, poll when streaming keeps failing.

Every snapshot passes through one gate, `_offer`, which lets a snapshot through only when its seq
is newer than the last one shown. Streams resume with `Last-Event-ID` set to that seq, so after a
reconnection the service replays exactly the changes missed and the gate drops anything repeated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError

from taskstream.client.client import Api, ServiceError, Unreachable, describe

TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

Snapshot = dict[str, Any]


@dataclass(frozen=True)
class FollowOptions:
    # How long the service may stay unreachable (or failing) before giving up.
    patience: float = 60.0
    # Stream attempts in a row that fail before falling back to polling.
    stream_attempts: int = 3
    poll_interval: float = 0.5
    # While polling, how often to try the stream again: it is cheaper and misses nothing.
    stream_retry_interval: float = 10.0
    # The first reconnection delay; it doubles on each failure up to the server's `retry:`.
    backoff: float = 0.25


class _StreamFailed(Exception):
    """One stream attempt ended before the task did."""


class Follower:
    """Shows each change of one task once, in order, until a terminal snapshot."""

    def __init__(
        self,
        api: Api,
        task_id: str,
        show: Callable[[Snapshot], None],
        notice: Callable[[str], None],
        options: FollowOptions | None = None,
        last_seq: int = 0,
    ):
        self.api = api
        self.task_id = task_id
        self.show = show
        self.notice = notice
        self.options = options or FollowOptions()
        self.last_seq = last_seq
        self._retry_cap = 2.0  # seconds, until the stream's `retry:` field says otherwise
        self._last_answer = time.monotonic()
        self._progressed = False
        self._connected = False

    def run(self) -> Snapshot:
        """Follow until the task ends; its terminal snapshot. Raises ServiceError (4xx, e.g. an
        unknown id) at once, and Unreachable once the service has been lost for too long."""
        failures = 0
        while True:
            self._progressed = False
            try:
                ended = self._stream()
                if ended is not None:
                    return ended
                reason = "the stream ended before the task did"
            except ServiceError as exc:
                if exc.client_error:
                    raise
                reason = str(exc)
            except _StreamFailed as exc:
                reason = str(exc)
            failures = 0 if self._progressed else failures + 1
            self._check_patience(reason)
            if failures >= self.options.stream_attempts:
                self.notice(f"streaming keeps failing ({reason}); polling instead")
                ended = self._poll(self.options.stream_retry_interval)
                if ended is not None:
                    return ended
                # One more stream attempt, then back to polling if that fails too.
                failures = self.options.stream_attempts - 1
                continue
            delay = 0.0 if failures == 0 else self._backoff(failures)
            if self._connected:
                self.notice(f"connection lost ({reason}); resuming after seq {self.last_seq}")
            else:
                self.notice(f"cannot stream ({reason}); trying again")
            time.sleep(delay)

    def _backoff(self, failures: int) -> float:
        return min(self._retry_cap, self.options.backoff * 2 ** (failures - 1))

    def _check_patience(self, reason: str) -> None:
        if time.monotonic() - self._last_answer > self.options.patience:
            raise Unreachable(
                f"gave up after {self.options.patience:g}s without the service: {reason}"
            )

    def _offer(self, snap: Snapshot) -> Snapshot | None:
        """Show `snap` if it is new; return it if the task has ended."""
        seq = int(snap["seq"])
        if seq > self.last_seq:
            self.show(snap)
            self.last_seq = seq
            self._progressed = True
        return snap if snap["state"] in TERMINAL else None

    def _stream(self) -> Snapshot | None:
        connected = False
        try:
            with self.api.events(self.task_id, self.last_seq) as source:
                response = source.response
                if response.status_code >= 400:
                    response.read()
                    raise ServiceError.from_response(response)
                connected = self._connected = True
                if response.status_code == 204:
                    # The service says we have seen the end already; show it from a fresh read.
                    return self._fetch()
                for sse in source.iter_sse():
                    if sse.retry is not None:
                        self._retry_cap = max(sse.retry / 1000, self.options.backoff)
                    if not sse.data:
                        continue
                    ended = self._offer(json.loads(sse.data))
                    if ended is not None:
                        return ended
        except Unreachable as exc:
            raise _StreamFailed(str(exc)) from None
        except (httpx.TransportError, SSEError) as exc:
            raise _StreamFailed(describe(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:
            # Not a snapshot: something other than the service answered; treat it as a failure.
            raise _StreamFailed(f"unreadable event ({describe(exc)})") from None
        finally:
            # A stream that was open was an answer until now, however quiet the task was (its
            # keepalives never reach this code), so patience counts from here.
            if connected:
                self._last_answer = time.monotonic()
        return None

    def _fetch(self) -> Snapshot | None:
        snap, _ = self.api.get(self.task_id)
        assert snap is not None
        return self._offer(snap)

    def _poll(self, duration: float) -> Snapshot | None:
        """Poll for `duration` seconds; the terminal snapshot if the task ends meanwhile."""
        deadline = time.monotonic() + duration
        etag: str | None = None
        while True:
            try:
                snap, etag = self.api.get(self.task_id, etag)
                self._last_answer = time.monotonic()
                if snap is not None:
                    ended = self._offer(snap)
                    if ended is not None:
                        return ended
            except ServiceError as exc:
                if exc.client_error:
                    raise
                self._check_patience(str(exc))
            except Unreachable as exc:
                self._check_patience(str(exc))
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.options.poll_interval)
