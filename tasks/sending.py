"""A task message whose publish fails after before_task_publish made its record.

The record is made before the message goes out, so that whoever sent it can follow it by its id
at once; Celery has no signal for a publish that then fails (a value its serializer refuses, a
broker that does not answer). Without this, that record would stay PENDING for ever: the tracked
app's AMQP sends through a wrapper that records the failure, then raises it as before.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.utils.imports import symbol_by_name
from kombu.exceptions import EncodeError
from kombu.utils.objects import cached_property

from taskstream import recording
from taskstream.record import ending
from taskstream.states import TaskState

log = logging.getLogger(__name__)


def guard_sends(app: Celery) -> None:
    """Make `app`'s task messages record a publish that fails."""
    base = symbol_by_name(app.amqp_cls)
    if getattr(base, "taskstream_guarded", False):
        return

    class GuardedAMQP(base):  # type: ignore[misc,valid-type]
        taskstream_guarded = True

        @cached_property
        def send_task_message(self) -> Any:
            # Made when first used, as Celery's own is: it reads the app's configuration then.
            return _guarded(self.app, self._create_task_sender())

    app.amqp_cls = GuardedAMQP
    made = app.__dict__.get("amqp")
    if made is not None:
        # Already made by a send before init_celery: the next send makes its sender anew.
        made.__class__ = GuardedAMQP
        made.__dict__.pop("send_task_message", None)


def _guarded(app: Celery, send: Any) -> Any:
    def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
        try:
            return send(producer, name, message, **options)
        except Exception as exc:
            not_sent(app, _task_id(message), exc)
            raise

    return send_task_message


def _task_id(message: Any) -> str | None:
    headers, _, body, _ = message
    found = (headers or {}).get("id")
    if found is None and isinstance(body, dict):  # task protocol 1
        found = body.get("id")
    return found if isinstance(found, str) else None


def not_sent(app: Celery, task_id: str | None, exc: Exception) -> None:
    """End the record of a task whose message could not be published, if it is still PENDING
    (a retry's message that fails leaves its task running: the task fails with the error)."""
    if task_id is None or recording.submitting(task_id):
        # POST /tasks answers 503 and records the failure itself.
        return
    detail = f": {exc}" if isinstance(exc, EncodeError) else ""
    error = {
        "type": "EnqueueError",
        "message": f"the task could not be sent ({type(exc).__name__}{detail})",
    }
    try:
        rec = recording.recorder(app)
        found = rec.fields(task_id, ["state"])
        if found is None or found[0] != TaskState.PENDING:
            return
        rec.record(ending(task_id, {"state": TaskState.FAILURE, "error": error}))
    except Exception:
        log.exception("could not record that task %s was not sent", task_id)
