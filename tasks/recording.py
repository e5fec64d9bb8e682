"""The worker's handle on the event record: one synchronous Recorder per Celery app and process."""

from __future__ import annotations

import os

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskstream.connections import sync_client
from taskstream.keys import Keys
from taskstream.record import Recorder
from taskstream.settings import Settings

_RECORD_RETRIES = 18


def settings_of(app: Celery) -> Settings:
    settings = app.conf.get("taskstream_settings")
    if settings is None:
        raise RuntimeError("this Celery app was not made by taskstream.celery_app.create_celery")
    return settings


def recorder(app: Celery) -> Recorder:
    # One per process: prefork children must not share the parent's sockets.
    cached = getattr(app, "_taskstream_recorder", None)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    settings = settings_of(app)
    client = sync_client(
        settings,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=2,
        health_check_interval=30,
        # A change the worker makes while Redis is away (restarting, failing over) is retried
        # for about half a minute rather than lost; the task waits meanwhile.
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=_RECORD_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    rec = Recorder(
        client,
        Keys(settings.key_prefix),
        settings.task_ttl_seconds,
        settings.events_retained,
        settings.global_events_retained,
        min_replicas=settings.record_min_replicas,
        replica_timeout_ms=settings.record_replica_timeout_ms,
    )
    app._taskstream_recorder = (os.getpid(), rec)
    return rec
