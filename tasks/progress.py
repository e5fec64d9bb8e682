"""Progress as tasks report it: `report_progress`, and Celery's own `update_state` meta.

A PROGRESS change's `progress` holds current, total, percent and message. A task that reports
with `self.update_state(state=..., meta=...)` also keeps its whole `meta` there, and a state
other than PROGRESS (Celery allows any name) is kept as `progress.state`: the snapshot's `state`
stays in the contract's vocabulary (PROGRESS), while AsyncResult answers with the custom name
and the meta, as Celery would. Except for SUCCESS, FAILURE and REVOKED said by a task still
running (and RETRY, which holds no exception): AsyncResult answers PROGRESS (not ready) until the
task has ended, so that get() returns the task's outcome, not what it said on the way. Celery's
own names PENDING and STARTED said with a meta are answered as said.
"""

from __future__ import annotations

import math
from typing import Any

from celery import current_task
from celery.exceptions import Ignore

from taskstream.record import Change, Status, jsonable
from taskstream.recording import record
from taskstream.states import TaskState


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _percent(current: float | None, total: float | None) -> float | None:
    if current is None or not total:
        return None
    return round(min(max(current / total, 0.0), 1.0) * 100, 1)


def progress_of(state: str, meta: Any) -> dict[str, Any]:
    """The `progress` of a PROGRESS change made by `update_state(state=state, meta=meta)`."""
    fields = meta if isinstance(meta, dict) else {}
    current, total = _number(fields.get("current")), _number(fields.get("total"))
    message = fields.get("message")
    try:
        meta = jsonable(meta)
    except (TypeError, ValueError):
        # Recorded rather than dropped: its text, since it has no JSON form.
        meta = repr(meta)
    progress: dict[str, Any] = {
        "current": current,
        "total": total,
        "percent": _percent(current, total),
        "message": message if isinstance(message, str) else None,
        "meta": meta,
    }
    if state != TaskState.PROGRESS:
        progress["state"] = state
    return progress


def report_progress(current: float, total: float | None = None, message: str | None = None) -> None:
    """Record that the running task has done `current` of `total`, with an optional message.

    If the task was cancelled meanwhile, this stops it: the cancel already recorded REVOKED, and
    stopping here is how a task in any pool (not only prefork, which can be terminated) ends.
    """
    task = current_task
    if task is None or not task.request.id:
        raise RuntimeError("report_progress() must be called from inside a running task")
    progress = {
        "current": current,
        "total": total,
        "percent": _percent(current, total),
        "message": message,
    }
    outcome = record(
        task.app, Change(task.request.id, {"state": TaskState.PROGRESS, "progress": progress})
    )
    if outcome.status is Status.TERMINAL:
        raise Ignore()
