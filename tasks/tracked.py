"""The base class of taskstream's own tasks: it records its start and retries through Celery's
task hooks, and a cancelled task never runs, wherever it is delivered.

Tasks of any other class are recorded all the same (taskstream.signals, taskstream.backend).
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from taskstream.record import Status
from taskstream.recording import record_retry, record_started


class TrackedTask(Task):
    # Settings for every registered task; see taskstream.celery_app for the worker-wide ones.
    acks_late = True
    track_started = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        # The record says REVOKED: the cancel reached Redis before this worker ran the task,
        # perhaps before a restart that forgot Celery's own in-memory list of revoked ids. The
        # record is the durable truth.
        if record_started(self.app, self.request) is Status.TERMINAL:
            raise Ignore()

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        record_retry(self.app, self.request, exc, getattr(einfo, "traceback", None))
