"""The progress helper for task authors: one call records a PROGRESS change for the running task."""

from __future__ import annotations

from celery import current_task
from celery.exceptions import Ignore

from taskstream.record import Change, Status
from taskstream.recording import recorder
from taskstream.states import TaskState


def report_progress(current: float, total: float | None = None, message: str | None = None) -> None:
    """Record that the running task has done `current` of `total`, with an optional message.

    If the task was cancelled meanwhile, this stops it: the cancel already recorded REVOKED, and
    stopping here is how a task in any pool (not only prefork, which can be terminated) ends.
    """
    task = current_task
    if task is None or not task.request.id:
        raise RuntimeError("report_progress() must be called from inside a running task")
    percent = None
    if total:
        percent = round(min(max(current / total, 0.0), 1.0) * 100, 1)
    progress = {"current": current, "total": total, "percent": percent, "message": message}
    outcome = recorder(task.app).record(
        Change(task.request.id, {"state": TaskState.PROGRESS, "progress": progress})
    )
    if outcome.status is Status.TERMINAL:
        raise Ignore()
