"""Celery's signals, for what only signals see: a message being published, a message received by a
worker, the per-process start of a pool child, and the start and retry of tasks whose class is
not taskstream's (the others record them through TrackedTask's hooks).

Everything a result backend sees (SUCCESS, FAILURE, REVOKED, update_state) is recorded by
taskstream.backend, for every task of the app whatever its class. Handlers act only for apps
taskstream tracks (taskstream.recording.track).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_task, states
from celery.exceptions import Ignore
from celery.signals import (
    before_task_publish,
    task_postrun,
    task_prerun,
    task_received,
    task_retry,
    worker_process_init,
    worker_process_shutdown,
)
from celery.worker import state as worker_state

from taskstream import recording
from taskstream.backend import RecordBackend
from taskstream.record import Change, Status
from taskstream.recording import OWNER_HEADER, RERUN_HEADER
from taskstream.states import TaskState
from taskstream.tracked import TrackedTask

log = logging.getLogger(__name__)


@before_task_publish.connect
def _on_publish(
    sender: Any = None,
    body: Any = None,
    routing_key: str | None = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    # In the producer, before the message can reach any worker: the task can be polled and
    # followed by its id as soon as whoever sent it has the id. A retry's new message finds the
    # record there already, and creating changes nothing then.
    found = recording.publishing_app((properties or {}).get("reply_to"))
    if found is None or not headers or not headers.get("id"):
        return
    if recording.recording_here.get() == headers["id"]:
        # Sent by taskstream.fast_publish, which creates the record with the push.
        return
    _, t = found
    sent = publish_creation(t, sender, body, routing_key, headers)
    ahead = recording.ahead_creations(t, sent, recording.message_embed(body))
    recording.record_publish(t, sent, ahead)


def publish_creation(
    t: recording.Tracking,
    sender: Any,
    body: Any,
    routing_key: str | None,
    headers: dict[str, Any],
) -> Change:
    """The change creating the record of a message being published, from what
    before_task_publish is given: the one way a producer's record is made."""
    owner = headers.get(OWNER_HEADER)
    if owner is None:
        parent = current_task.request if current_task else None
        owner = getattr(parent, OWNER_HEADER, None) or ""
    args, kwargs = recording.message_payload(body)
    return recording.creation(
        t,
        headers["id"],
        headers.get("task") or str(sender),
        args=args,
        kwargs=kwargs,
        owner=owner,
        queue=routing_key or None,
        parent_id=headers.get("parent_id"),
        root_id=headers.get("root_id"),
        group_id=headers.get("group"),
        eta=headers.get("eta"),
        rerun_of=headers.get(RERUN_HEADER),
    )


@task_received.connect
def _on_received(request: Any = None, **_: Any) -> None:
    app = request.task.app if request.task is not None else None
    if app is None or not recording.is_tracked(app):
        return
    if request.request_dict.get("retries"):
        # A retry's new message: the contract shows RETRY followed by STARTED, no RECEIVED.
        return
    change = Change(request.id, {"state": TaskState.RECEIVED, "worker": request.hostname})
    outcome = recording.record(app, change)
    if outcome.status is Status.UNKNOWN and outcome is not recording.FAILED:
        # Sent by a producer that knows nothing of taskstream: recorded from here on.
        recording.recorder(app).record(_creation_on_receipt(app, request))
        outcome = recording.record(app, change)
    if outcome.status is Status.TERMINAL:
        # Cancelled before any worker had it (perhaps before a restart that forgot Celery's own
        # revoked list): Celery's revoked set makes this worker skip it, acknowledge it and call
        # the backend's mark_as_revoked, for every task class.
        worker_state.revoked.add(request.id)
        ended = (outcome.snapshot or {}).get("state")
        if ended != TaskState.REVOKED:
            # Not a cancel: a message sent again with the id of a task that has ended. Its
            # record is final (a cancel and a finish cannot both win), so it is not run.
            log.warning(
                "task %s already ended %s: a task id is used once; this message is not run "
                "(send it with a new id)",
                request.id,
                ended,
            )


def _creation_on_receipt(app: Any, request: Any) -> Change:
    headers = request.request_dict
    return recording.creation(
        recording.tracking(app),
        request.id,
        request.name,
        args=request.args,
        kwargs=request.kwargs,
        owner=headers.get(OWNER_HEADER) or "",
        queue=(request.delivery_info or {}).get("routing_key"),
        parent_id=request.parent_id,
        root_id=request.root_id,
        group_id=headers.get("group"),
        eta=headers.get("eta"),
    )


@task_prerun.connect
def _on_prerun(task: Any = None, **_: Any) -> None:
    # TrackedTask records its own start (before_start), where it can also stop a cancelled task.
    if isinstance(task, TrackedTask) or not recording.is_tracked(task.app):
        return
    recording.record_started(task.app, task.request)


@task_postrun.connect
def _on_postrun(
    task: Any = None, task_id: str = "", retval: Any = None, state: str | None = None, **_: Any
) -> None:
    # Celery stores nothing for a task that raised Ignore: the backend ends its record.
    if state != states.IGNORED or task is None or not recording.is_tracked(task.app):
        return
    backend = task.backend
    if isinstance(backend, RecordBackend) and isinstance(retval, Ignore):
        backend.end_ignored(task_id, retval, task.request)


@task_retry.connect
def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **kw: Any) -> None:
    if isinstance(sender, TrackedTask) or not recording.is_tracked(sender.app):
        return
    einfo = kw.get("einfo")
    cause = getattr(reason, "exc", None) or reason
    recording.record_retry(sender.app, request, cause, getattr(einfo, "traceback", None))


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # A prefork child: its own Redis connections, never the parent's copied sockets.
    recording.forget_clients()


@worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    recording.close_clients()
