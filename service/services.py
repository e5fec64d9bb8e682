"""The objects one web process holds: its Redis client, the record, the hub, the Celery app."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from celery import Celery
from quart import current_app

from taskstream import connections
from taskstream.fast_publish import FastPublisher
from taskstream.keys import Keys
from taskstream.monitor import Monitor
from taskstream.pipelined import Pipelined
from taskstream.record import AsyncRecorder, Outcome
from taskstream.recording import submit as submit_task
from taskstream.settings import Settings
from taskstream.web.auth import Authenticator
from taskstream.web.cursors import Cursors
from taskstream.web.hub import Hub
from taskstream.web.metrics import Metrics
from taskstream.web.problems import Problem
from taskstream.web.queues import QueueDepths
from taskstream.web.security import StreamSlots
from taskstream.web.session_streams import SessionStreams

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    celery: Celery
    # Celery's publishing is synchronous: it runs on these threads, never on the event loop.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="celery-publish")
    )
    metrics: Metrics = field(default_factory=Metrics)
    # Wall-clock time for windows (the submission limit); tests set their own instead of waiting.
    clock: Callable[[], float] = time.time
    auth: Authenticator = field(init=False)
    cursors: Cursors = field(init=False)
    slots: StreamSlots = field(init=False)
    redis: Any = None
    record: AsyncRecorder = field(init=False)
    hub: Hub = field(init=False)
    keys: Keys = field(init=False)
    monitor: Monitor = field(init=False)
    queue_depths: QueueDepths = field(init=False)
    fast: FastPublisher = field(init=False)
    sessions: SessionStreams = field(init=False)

    async def start(self) -> None:
        s = self.settings
        # A small fixed pool: thousands of streams share a handful of connections, waiting their
        # turn for a connection rather than opening one each. Four keep up with one event loop
        # (bench: stream opens and submissions a second as with sixteen).
        self.redis = connections.async_client(
            s,
            max_connections=4,
            decode_responses=True,
            timeout=10,
            socket_connect_timeout=5,
            socket_timeout=10,
            socket_keepalive=True,
            health_check_interval=15,
        )
        keys = self.keys = Keys(s.key_prefix)
        self.record = AsyncRecorder(
            self.redis,
            keys,
            s.task_ttl_seconds,
            s.events_retained,
            s.global_events_retained,
            min_replicas=s.record_min_replicas,
            replica_timeout_ms=s.record_replica_timeout_ms,
        )
        self.monitor = Monitor(self.redis, keys, s.worker_offline_seconds)
        if not s.record_min_replicas:
            # Submissions' script calls (record-and-push, the submission limit) share one
            # connection of their own, in flight together; with RECORD_MIN_REPLICAS the record
            # is followed by WAIT on a pooled connection instead.
            self.record.pipelined = Pipelined(
                connections.async_client(
                    s, socket_connect_timeout=5, socket_keepalive=True, decode_responses=True
                ),
                timeout=10,
            )
        # On a Redis broker, submissions are published from the event loop (fast_publish).
        self.fast = FastPublisher(self.celery, s, self.record, self.redis, self._off_loop)
        self.queue_depths = QueueDepths(self.celery, self.executor)
        # The subscriber makes its connection through a client of its own, so a pub/sub socket
        # with no timeout never comes out of the shared pool.
        sub_client = connections.async_client(s, socket_connect_timeout=5, socket_keepalive=True)
        self.hub = Hub(sub_client, keys, s.stream_buffer)
        self._sub_client = sub_client
        self.sessions = SessionStreams(self.redis, keys, lambda: self.clock())
        self.sessions.start()
        await self.hub.start()
        # A thread of its own, not the pool's: a broker that never answers would hold it, and
        # the interpreter waits for the pool's threads when it exits.
        threading.Thread(
            target=_warm_broker, args=(self.celery,), name="broker-warm-up", daemon=True
        ).start()

    def end_streams_on_shutdown_signals(self) -> None:
        """On SIGTERM or SIGINT, end every open stream at once.

        Hypercorn stops accepting and waits for open responses before it shuts the app down, and
        a stream would keep it waiting until its graceful timeout. Ended, each stream's client
        reconnects (after the `retry:` it was given) to another process and resumes with
        Last-Event-ID. The asyncio loop's own handlers (Hypercorn's) still run: they are woken
        through the loop's wake-up descriptor, not through the Python-level handler set here.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.hub.close_streams)
                if callable(previous):
                    previous(sig, frame)

            signal.signal(signum, handler)

    async def stop(self) -> None:
        await self.sessions.stop()
        await self.hub.stop()
        await self.fast.close()
        if self.record.pipelined is not None:
            await self.record.pipelined.close()
        await self._sub_client.aclose()
        await self.redis.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args, **kwargs))

    async def submit(
        self,
        task_id: str,
        name: str,
        kwargs: dict[str, Any],
        owner: str,
        rerun_of: str | None = None,
    ) -> Outcome:
        """Publish the task like any producer; its record (PENDING) is made as it is sent.

        On a Redis broker, straight from the event loop with the record (fast_publish); else,
        or where that path cannot send the message as Celery would, Celery's own publish."""
        if self.celery.conf.task_always_eager:
            # Celery would run the task here, holding the event loop for all of its run, and
            # then fail the request with the task already done: a configuration to refuse.
            log.error("task_always_eager is set on the Celery app: submissions are refused")
            raise Problem(503, "Service Unavailable",
                          "The Celery app runs tasks eagerly (task_always_eager), which would run "
                          "them inside the web process; unset it to submit.",
                          kind="queue-unavailable")  # fmt: skip
        task = self.celery.tasks[name]
        outcome = await self.fast.submit(task, task_id, kwargs, owner, rerun_of)
        if outcome is not None:
            return outcome
        return await self._off_loop(_submit, self.celery, name, task_id, kwargs, owner, rerun_of)

    async def run_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """A Lua script of the web's own: on the pipelined connection where there is one."""
        if self.record.pipelined is not None:
            return await self.record.pipelined.eval(script, keys, args)
        return await self.redis.eval(script, len(keys), *keys, *args)

    async def revoke(self, task_id: str) -> None:
        # terminate=True stops it if a prefork child is running it; a task still queued is only
        # marked, and its worker will find the record REVOKED and skip it anyway.
        await self._off_loop(self.celery.control.revoke, task_id, terminate=True)


def _warm_broker(celery: Celery) -> None:
    """Connect to the broker and make the producer that a cancel's revoke uses, at start rather
    than at the first cancel: cold, that is ~60 ms of Python on a thread, and meanwhile the event
    loop waits for the GIL, so every stream of the process (the cancelled task's last change to
    all its watchers, first of all) waited with it."""
    try:
        with celery.connection_or_acquire() as connection:
            connection.ensure_connection(max_retries=1)
            celery.control.mailbox(connection)
        with celery.producer_or_acquire():
            pass
    except Exception as exc:
        log.info("broker not reached at start (%s); connecting at first use", type(exc).__name__)


def _submit(
    celery: Celery,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    owner: str,
    rerun_of: str | None,
) -> Outcome:
    return submit_task(celery.tasks[name], task_id, kwargs, owner, rerun_of)


def services() -> Services:
    return current_app.extensions["taskstream"]
