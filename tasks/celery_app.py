"""The Celery wiring: `init_celery` configures any Celery app for taskstream, and `create_celery`
is taskstream's own app (a Celery app + `init_celery`), so there is one path either way.

Importing this module connects to nothing; Celery connects lazily, when a worker starts or a
message is first sent.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from celery import Celery
from celery.app.utils import find_app
from celery.signals import setup_logging

from taskstream import connections, logs
from taskstream.recording import track
from taskstream.settings import Settings, SettingsError, redis_tls_options

DEMO_MODULE = "taskstream.demo"


def init_celery(app: Celery, settings: Settings | None = None) -> Celery:
    """Configure an existing Celery app so every task it sends or runs is recorded.

    Call it once, after the app's own configuration (`config_from_object` and the like), in the
    module the worker loads (`celery -A myproj.celery:app`) and producers import. It sets what the
    record relies on (JSON only, late acks, STARTED tracked, the signal handlers, the record's
    settings from the environment) and the modules to import (TASK_MODULES, the demonstration
    tasks unless DEMO_TASKS=false), and leaves the app's broker, queues and routing as they are.
    """
    settings = settings or Settings.from_env()
    connections.guard_closed_broker_connections()
    conf = app.conf
    existing = tuple(conf.get("imports") or ())
    known = {*existing, *(conf.get("include") or ())}
    wanted = [*settings.task_modules, *([DEMO_MODULE] if settings.demo_tasks else [])]
    conf.update(
        # JSON only, both ways: a pickle on the wire is code execution for whoever can write it.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A worker killed mid-task leaves its message unacknowledged, so the task runs again
        # (on Redis after the visibility timeout) instead of being lost.
        task_acks_late=True,
        task_track_started=True,
        # The worker imports these at start, as it would modules named in `include`.
        imports=(*existing, *(m for m in wanted if m not in known)),
        # Where the signal handlers (in the worker and in every producer) find the record.
        taskstream_settings=settings,
    )
    # Only limits the deployment asks for: an app's own stay otherwise.
    if settings.task_time_limit_seconds:
        conf.task_time_limit = settings.task_time_limit_seconds
    if settings.task_soft_time_limit_seconds:
        conf.task_soft_time_limit = settings.task_soft_time_limit_seconds
    if settings.worker_concurrency:
        conf.worker_concurrency = settings.worker_concurrency
    # Every task the app sends or runs is recorded (the signal handlers act for tracked apps),
    # and the record is the app's result backend.
    track(app, settings)
    # Workers report on themselves (taskstream.workers): another import side effect.
    import taskstream.workers  # noqa: F401

    return app


def create_celery(settings: Settings | None = None) -> Celery:
    """taskstream's own app (`celery -A taskstream.worker`): its broker is CELERY_BROKER_URL, or
    REDIS_URL when that is unset, and everything it names lives under KEY_PREFIX."""
    settings = settings or Settings.from_env()
    prefix = settings.key_prefix
    # CELERY_BROKER_URL, else REDIS_URL, or the master Redis Sentinel names (REDIS_SENTINELS).
    broker, transport, sentinel_options = (
        (settings.celery_broker_url, None, {})
        if settings.celery_broker_url
        else connections.broker(settings)
    )
    app = Celery("taskstream")
    app.conf.update(
        broker_url=broker,
        broker_transport=transport,
        broker_use_ssl=redis_tls_options(settings.celery_broker_url or settings.redis_url),
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        # Everything Celery names on the broker lives under the deployment's prefix too: queues,
        # the control (revoke) broadcast and, on Redis, its keys and pub/sub channels.
        task_default_queue=f"{prefix}.tasks",
        control_exchange=f"{prefix}.control",
        event_exchange=f"{prefix}.celeryev",
        broker_transport_options={**_transport_options(broker, settings), **sentinel_options},
        # Keep trying the broker forever, at start-up and after a loss, rather than exiting.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    init_celery(app, settings)

    # Celery configures logging itself unless something answers setup_logging: we do, so the
    # worker writes the same structured lines as the web, with the task id as a field.
    def structured_logging(loglevel: object = None, **_: object) -> None:
        level = loglevel if isinstance(loglevel, str) else settings.log_level
        logs.configure(level=level, fmt=settings.log_format)

    setup_logging.connect(structured_logging, weak=False)
    return app


def _transport_options(broker: str, settings: Settings) -> dict[str, object]:
    if urlsplit(broker).scheme not in ("redis", "rediss", "sentinel"):
        return {}
    return {
        "visibility_timeout": settings.visibility_timeout_seconds,
        # Look for messages of dead workers often enough that a task is re-run soon after its
        # visibility timeout, not up to a hundred seconds later (kombu's default).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 3)),
        "unacked_restore_throttle": 1,
        "global_keyprefix": f"{settings.key_prefix}:celery:",
        "socket_keepalive": True,
        "health_check_interval": 10,
    }


def load_celery(settings: Settings) -> Celery:
    """The web process's Celery app: CELERY_APP's (imported from the current directory, as
    `celery -A` does for the worker) or taskstream's own, with its task modules imported and
    SUBMITTABLE_TASKS registered, so the web knows every task's name and arguments."""
    from taskstream.registry import register_named

    if settings.celery_app or settings.task_modules:
        # The project's own directory, as for the worker: its modules must import in the web too.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
    if settings.celery_app:
        try:
            app = find_app(settings.celery_app)
        except (ImportError, AttributeError) as exc:
            raise SettingsError(f"CELERY_APP: cannot load {settings.celery_app!r}: {exc}") from None
        if not isinstance(app, Celery) or "taskstream_settings" not in app.conf:
            raise SettingsError(
                f"CELERY_APP: {settings.celery_app!r} is not a Celery app configured by "
                "taskstream.init_celery(app)"
            )
    else:
        app = create_celery(settings)
    try:
        app.loader.import_default_modules()
    except ImportError as exc:
        raise SettingsError(f"TASK_MODULES: {exc}") from None
    try:
        register_named(app, settings.submittable_tasks)
    except LookupError as exc:
        raise SettingsError(f"SUBMITTABLE_TASKS: {exc.args[0]}") from None
    return app
