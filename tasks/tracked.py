"""The base class of registered tasks: a cancelled task never runs, wherever it is delivered."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore


class TrackedTask(Task):
    # Settings for every registered task; see taskstream.celery_app for the worker-wide ones.
    acks_late = True
    track_started = True
    ignore_result = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # task_prerun (taskstream.signals) found the record already REVOKED: the cancel reached
        # Redis before this worker ran the task, possibly before a restart that forgot Celery's own
        # in-memory list of revoked ids. The record is the durable truth.
        if getattr(self.request, "taskstream_cancelled", False):
            raise Ignore()
        return super().__call__(*args, **kwargs)
