"""Celery's signals, turned into recorded changes: the worker side of signal → record → pub/sub.

Each handler runs in the process where Celery raises the signal (RECEIVED and REVOKED in the
worker's main process, the rest in the pool child running the task) and records there, so the
change is stamped by the process that made it. Handlers only ever record changes of tasks in the
registry; anything else a worker runs is none of the record's business.
"""

from __future__ import annotations

import logging
import traceback as tb
from typing import Any

from celery import current_app
from celery.signals import (
    task_failure,
    task_prerun,
    task_received,
    task_retry,
    task_revoked,
    task_success,
)

from taskstream.record import Change, Status, dumps, utcnow
from taskstream.recording import recorder, settings_of
from taskstream.registry import REGISTRY
from taskstream.states import TaskState

log = logging.getLogger(__name__)


def _record(
    task_id: str, fields: dict[str, Any], retries_below: int | None = None, **set_if_absent: Any
) -> Status:
    change = Change(task_id, fields, set_if_absent, only_if_retries_below=retries_below)
    try:
        return recorder(current_app).record(change).status
    except Exception:
        # A signal handler that raises is logged and ignored by Celery; say which task it was.
        log.exception("could not record %s for task %s", fields.get("state"), task_id)
        return Status.UNKNOWN


def _error(exc: BaseException, traceback: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if settings_of(current_app).expose_tracebacks and traceback is not None:
        error["traceback"] = "".join(tb.format_tb(traceback))
    return error


@task_received.connect
def _on_received(request: Any = None, **_: Any) -> None:
    # A retry's new message is received too; the contract shows RETRY followed by STARTED.
    if request.name in REGISTRY and not request.request_dict.get("retries"):
        _record(request.id, {"state": TaskState.RECEIVED})


@task_prerun.connect
def _on_prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    if task.name not in REGISTRY:
        return
    attempt = task.request.retries
    if attempt:
        # The retry's new message can be taken by another pool process before the old one
        # records RETRY (countdown=0): then record RETRY first, so the states stay in order;
        # the old one's late RETRY is refused as superseded.
        _record(task_id, {"state": TaskState.RETRY, "retries": attempt}, retries_below=attempt)
    status = _record(
        task_id,
        {"state": TaskState.STARTED, "retries": attempt, "error": None},
        started_at=utcnow(),
    )
    if status is Status.TERMINAL:
        # Already REVOKED: taskstream.tracked.TrackedTask will not run it.
        task.request.taskstream_cancelled = True


@task_retry.connect
def _on_retry(request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
    if request.task not in REGISTRY:
        return
    cause = getattr(reason, "exc", None) or reason
    # While RETRY, `error` holds what made this attempt fail; the next STARTED clears it.
    attempt = request.retries + 1
    fields = {"state": TaskState.RETRY, "retries": attempt, "error": _error(cause)}
    _record(request.id, fields, retries_below=attempt)


@task_success.connect
def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if sender.name not in REGISTRY:
        return
    task_id = sender.request.id
    try:
        dumps(result)
    except (TypeError, ValueError) as exc:
        fields = {
            "state": TaskState.FAILURE,
            "error": {"type": "ResultNotJSON", "message": f"the result is not JSON: {exc}"},
        }
    else:
        fields = {"state": TaskState.SUCCESS, "result": result}
    _record(task_id, {**fields, "finished_at": utcnow()})


@task_failure.connect
def _on_failure(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    traceback: Any = None,
    **_: Any,
) -> None:
    if sender is None or sender.name not in REGISTRY or exception is None:
        return
    _record(
        task_id,
        {
            "state": TaskState.FAILURE,
            "error": _error(exception, traceback),
            "finished_at": utcnow(),
        },
    )


@task_revoked.connect
def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    # `request` is a worker Request, or a task Context when revoked from inside the task.
    name = getattr(sender, "name", None) or getattr(request, "name", None)
    if request is None or name not in REGISTRY:
        return
    # Usually the web process recorded REVOKED first and this finds the task terminal already.
    _record(request.id, {"state": TaskState.REVOKED, "finished_at": utcnow()})
