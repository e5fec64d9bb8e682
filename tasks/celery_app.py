"""The Celery wiring: one factory builds the app from the same Settings the web process uses.

Importing this module connects to nothing; Celery connects lazily, when a worker starts or a
message is first sent.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging

from taskstream import logs
from taskstream.settings import Settings, redis_tls_options


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    prefix = settings.key_prefix
    app = Celery("taskstream")
    app.conf.update(
        broker_url=settings.redis_url,
        broker_use_ssl=redis_tls_options(settings.redis_url),
        # The event record is the only result store: clients read states from it, never from a
        # Celery backend, so there is nothing to configure (or leak) there.
        result_backend=None,
        task_ignore_result=True,
        # JSON only, both ways: a pickle on the wire is code execution for whoever can write it.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A worker killed mid-task leaves its message unacknowledged, so the task runs again
        # after the visibility timeout instead of being lost.
        task_acks_late=True,
        task_track_started=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds or None,
        task_soft_time_limit=settings.task_soft_time_limit_seconds or None,
        worker_concurrency=settings.worker_concurrency or None,
        # Everything Celery names in Redis lives under the deployment's prefix too: queues, the
        # control (revoke) broadcast and its pub/sub channels.
        task_default_queue=f"{prefix}.tasks",
        control_exchange=f"{prefix}.control",
        event_exchange=f"{prefix}.celeryev",
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            # Look for messages of dead workers often enough that a task is re-run soon after
            # its visibility timeout, not up to a hundred seconds later (kombu's default).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 3)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{prefix}:celery:",
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
        # Keep trying the broker forever, at start-up and after a loss, rather than exiting.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        taskstream_settings=settings,
    )
    # Registering the tasks and connecting the signal handlers are import side effects, done
    # here so that both the worker and the web process see the same registry.
    import taskstream.demo
    import taskstream.signals  # noqa: F401

    # Celery configures logging itself unless something answers setup_logging: we do, so the
    # worker writes the same structured lines as the web, with the task id as a field.
    def structured_logging(loglevel: object = None, **_: object) -> None:
        level = loglevel if isinstance(loglevel, str) else settings.log_level
        logs.configure(level=level, fmt=settings.log_format)

    setup_logging.connect(structured_logging, weak=False)
    return app
