"""Workers report on themselves in Redis, from Celery's own signals: who they are when ready, a
heartbeat every two seconds (Celery's `heartbeat_sent`), what they hold and run, and how each task
attempt ended and how long it ran. The dashboard and `/metrics` read it back (taskstream.monitor)
without asking any worker anything: no broadcast `inspect` that blocks on the slowest worker.

Reporting never gets in a task's way: a Redis error here is logged and dropped, and the client
used has short timeouts and no retries (the record has its own client, which does retry).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import current_app
from celery.signals import (
    heartbeat_sent,
    task_postrun,
    task_prerun,
    task_received,
    task_revoked,
    worker_ready,
    worker_shutdown,
)

from taskstream import connections
from taskstream.backend import replaced
from taskstream.keys import Keys
from taskstream.monitor import OUTCOMES, record_end
from taskstream.recording import settings_of
from taskstream.states import TaskState

log = logging.getLogger(__name__)

_client: tuple[int, redis.Redis, Keys] | None = None
# Start times of the attempts this pool process is running, by task id.
_started: dict[str, float] = {}
# Who each worker of this process is, as it said when ready: said again with every heartbeat, so
# that a Redis that lost its data (a restart without persistence) learns it again.
_identity: dict[str, dict[str, Any]] = {}


def _redis() -> tuple[redis.Redis, Keys]:
    global _client
    # One per process: prefork children must not share the parent's sockets.
    if _client is None or _client[0] != os.getpid():
        settings = settings_of(current_app)
        client = connections.sync_client(
            settings, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )
        _client = (os.getpid(), client, Keys(settings.key_prefix))
    return _client[1], _client[2]


def _report(what: str, write: Any) -> None:
    try:
        client, keys = _redis()
        with client.pipeline(transaction=False) as pipe:
            write(pipe, keys)
            pipe.execute()
    except Exception as exc:
        log.warning("could not report %s: %s", what, type(exc).__name__)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    hostname = sender.hostname
    pool = getattr(sender.pool, "num_processes", None) or sender.controller.concurrency
    queues = ",".join(q.name for q in sender.task_consumer.queues)
    now = time.time()

    identity = _identity[hostname] = {
        "pid": os.getpid(), "pool": pool, "queues": queues, "started_at": now,
    }  # fmt: skip

    def write(pipe: Any, keys: Keys) -> None:
        # A worker restarted under the same name starts its counts again, as Celery's own do.
        key = keys.worker(hostname)
        pipe.delete(key)
        pipe.hset(key, mapping={**identity, "heartbeat": now, "active": 0, "reserved": 0,
                                "processed": 0, "failed": 0})  # fmt: skip
        pipe.zadd(keys.workers, {hostname: now})

    _report("worker ready", write)


@heartbeat_sent.connect
def _on_heartbeat(sender: Any = None, **_: Any) -> None:
    hostname = sender.eventer.hostname
    now = time.time()

    identity = _identity.get(hostname, {})

    def write(pipe: Any, keys: Keys) -> None:
        pipe.hset(keys.worker(hostname), mapping={**identity, "heartbeat": now})
        pipe.zadd(keys.workers, {hostname: now})

    _report("heartbeat", write)


@worker_shutdown.connect
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    _report("worker stopped", lambda pipe, keys: pipe.hset(
        keys.worker(hostname), "stopped_at", time.time()))  # fmt: skip


def _counted(name: str, app: Any) -> bool:
    """Whether a task's figures are kept: every task of the project (a name its app registers,
    so the set of names stays closed), not Celery's own (celery.chord_unlock and the like)."""
    return not name.startswith("celery.") and name in app.tasks


@task_received.connect
def _on_received(request: Any = None, **_: Any) -> None:
    hostname = request.hostname
    _report("task reserved", lambda pipe, keys: pipe.hincrby(keys.worker(hostname), "reserved", 1))


@task_prerun.connect
def _on_prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    _started[task_id] = time.monotonic()
    hostname = task.request.hostname

    def write(pipe: Any, keys: Keys) -> None:
        pipe.hincrby(keys.worker(hostname), "reserved", -1)
        pipe.hincrby(keys.worker(hostname), "active", 1)

    _report("task started", write)


@task_postrun.connect
def _on_postrun(task_id: str = "", task: Any = None, state: str | None = None, **kw: Any) -> None:
    began = _started.pop(task_id, None)
    runtime = None if began is None else time.monotonic() - began
    hostname = task.request.hostname
    # A task the record had already cancelled is skipped (Ignore): it ended REVOKED. One replaced
    # (Task.replace) has not ended: its replacement, under the same id, counts.
    outcome = TaskState.REVOKED if state == "IGNORED" else state
    if state == "IGNORED" and replaced(kw.get("retval")):
        outcome = None
    ran = state in (TaskState.SUCCESS, TaskState.FAILURE)

    def write(pipe: Any, keys: Keys) -> None:
        worker = keys.worker(hostname)
        pipe.hincrby(worker, "active", -1)
        pipe.hincrby(worker, "processed", 1)
        if state == TaskState.FAILURE:
            pipe.hincrby(worker, "failed", 1)
        if _counted(task.name, task.app) and outcome in OUTCOMES:
            pipe.sadd(keys.task_names, task.name)
            record_end(pipe, keys, task.name, outcome, runtime if ran else None, time.time())

    _report("task ended", write)


@task_revoked.connect
def _on_revoked(request: Any = None, terminated: bool = False, **_: Any) -> None:
    # In the main process: a task revoked before it started, or stopped while running.
    hostname = getattr(request, "hostname", None)
    name = getattr(request, "name", None) or getattr(request, "task", None)
    if not hostname:
        return

    def write(pipe: Any, keys: Keys) -> None:
        pipe.hincrby(keys.worker(hostname), "active" if terminated else "reserved", -1)
        if isinstance(name, str) and _counted(name, current_app):
            pipe.sadd(keys.task_names, name)
            record_end(pipe, keys, name, TaskState.REVOKED, None, time.time())

    _report("task revoked", write)
