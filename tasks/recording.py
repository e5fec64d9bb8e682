"""The Celery side's handle on the record: which Celery apps are tracked, one synchronous Recorder
per app and process, and how a task message becomes its record.

Every change a Celery process makes goes through here: the producer's PENDING (at publish), the
worker's RECEIVED, STARTED and RETRY (signals and the task class's hooks), and everything the
result backend stores (taskstream.backend).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback as tb
import weakref
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import redis
from celery import Celery, current_task
from celery.exceptions import ImproperlyConfigured
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskstream.connections import sync_client
from taskstream.keys import Keys
from taskstream.record import (
    Change,
    Outcome,
    Recorder,
    Status,
    dumps,
    jsonable,
    new_task_fields,
    utcnow,
)
from taskstream.settings import Settings
from taskstream.states import TaskState

log = logging.getLogger(__name__)

# How each role's client retries a record while Redis is away (backoff cap, retries): the
# worker's for about half a minute; a producer's gives up within a second or so, since a sender
# must not hang on the record (the worker records a task it receives unrecorded, and POST /tasks
# answers 503).
_WORKER: Final = (2.0, 18)
_PUBLISHER: Final = (0.5, 3)

# The message header that carries the submitting caller (POST /tasks) to the record; a task sent
# from inside a task inherits its parent's.
OWNER_HEADER = "taskstream_owner"
# The message header that links a re-run (POST /tasks/{id}/rerun) to the task it repeats.
RERUN_HEADER = "taskstream_rerun_of"

# Where create_celery/init_celery point Celery's result backend: the record itself.
RESULT_BACKEND = "taskstream.backend:RecordBackend"


# Enough for the largest header a producer sends at once; an id forgotten is only recorded again
# (refused as existing), never lost.
_AHEAD_REMEMBERED = 10_000


class Tracking:
    """What taskstream keeps for one tracked Celery app: its settings and this process's client."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        # This process's clients, one per role (_WORKER, _PUBLISHER), made on first use.
        self._clients: dict[tuple[float, int], Recorder] = {}
        self._lock = threading.Lock()
        # Ids this process has recorded ahead of their messages, newest last: every member of a
        # chord's header carries the same body, recorded once (see record_publish).
        self._made_ahead: OrderedDict[str, None] = OrderedDict()

    def made_ahead(self, task_id: str) -> bool:
        return task_id in self._made_ahead

    def note_ahead(self, task_id: str) -> None:
        with self._lock:
            self._made_ahead[task_id] = None
            if len(self._made_ahead) > _AHEAD_REMEMBERED:
                self._made_ahead.popitem(last=False)

    @property
    def recorder(self) -> Recorder:
        """The worker's: a change made while Redis is away is retried for about half a minute."""
        return self._client(_WORKER)

    @property
    def publisher(self) -> Recorder:
        """The producer's, for records made when a task is sent: it gives up within a second."""
        return self._client(_PUBLISHER)

    def _client(self, role: tuple[float, int]) -> Recorder:
        rec = self._clients.get(role)
        if rec is None:
            with self._lock:
                rec = self._clients.get(role)
                if rec is None:
                    cap, retries = role
                    retry = Retry(ExponentialBackoff(cap=cap, base=0.05), retries=retries)
                    rec = self._clients[role] = self._new_recorder(retry)
        return rec

    def _new_recorder(self, retry: Retry) -> Recorder:
        s = self.settings
        client = sync_client(
            s,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=2,
            health_check_interval=30,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        return Recorder(
            client,
            self.keys,
            s.task_ttl_seconds,
            s.events_retained,
            s.global_events_retained,
            min_replicas=s.record_min_replicas,
            replica_timeout_ms=s.record_replica_timeout_ms,
        )

    def forget_client(self) -> None:
        """In a forked child: the parent's sockets are not ours to use (or close)."""
        self._clients = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for rec in clients.values():
            rec.client.close()


_tracked: weakref.WeakKeyDictionary[Celery, Tracking] = weakref.WeakKeyDictionary()


def track(app: Celery, settings: Settings) -> Tracking:
    """Make `app` record every task it sends or runs, with the record as its result backend."""
    # Celery takes this variable over the app's configuration: the record would not be the
    # backend, and no task would ever be recorded as ended. Refused at start, not obeyed.
    elsewhere = os.environ.get("CELERY_RESULT_BACKEND")
    if elsewhere and elsewhere != RESULT_BACKEND:
        raise ImproperlyConfigured(
            "CELERY_RESULT_BACKEND is set in the environment; Celery would read results there "
            "instead of taskstream's record, which is the result backend of a tracked app. "
            "Unset it (AsyncResult reads the record)."
        )
    app.conf.update(taskstream_settings=settings, result_backend=RESULT_BACKEND)
    tracking = _tracked[app] = Tracking(settings)
    # The handlers are process-wide (Celery's signals are); they act for tracked apps only.
    import taskstream.signals  # noqa: F401
    from taskstream.sending import guard_sends

    guard_sends(app)

    return tracking


def _real(app: Any) -> Celery:
    # `celery.current_app` is a proxy, which cannot be weakly referenced.
    get = getattr(app, "_get_current_object", None)
    return get() if get is not None else app


def tracking(app: Celery) -> Tracking:
    app = _real(app)
    found = _tracked.get(app)
    if found is None:
        settings = app.conf.get("taskstream_settings")
        if settings is None:
            raise RuntimeError("this Celery app was not configured by taskstream.init_celery")
        found = _tracked[app] = Tracking(settings)
    return found


def settings_of(app: Celery) -> Settings:
    return tracking(app).settings


def recorder(app: Celery) -> Recorder:
    return tracking(app).recorder


def is_tracked(app: Celery) -> bool:
    return _real(app) in _tracked


def forget_clients() -> None:
    for t in _tracked.values():
        t.forget_client()


def close_clients() -> None:
    for t in _tracked.values():
        t.close()


def publishing_app(reply_to: str | None) -> tuple[Celery, Tracking] | None:
    """The tracked app that is publishing a message, found by its `reply_to` property.

    Celery stamps every message it sends with the sending app's per-thread id (`thread_oid`)
    unless the caller set `reply_to`; before_task_publish says nothing else about the app, and a
    process may hold apps that are not tracked.
    """
    for app, t in _tracked.items():
        if reply_to and app.thread_oid == reply_to:
            return app, t
    # A signature frozen elsewhere keeps its producer's `reply_to`: a chain's next step, a chord's
    # body, which the worker sends from inside the task before them.
    running = current_task._get_current_object() if current_task else None
    if running is not None and is_tracked(running.app):
        app = _real(running.app)
        return app, tracking(app)
    return None


def stored_json(value: Any, limit: int) -> Any:
    """A value as the dashboard gets it: itself when it is JSON within `limit` bytes."""
    try:
        size = len(dumps(value).encode())
    except (TypeError, ValueError):
        return {"unencodable": True, "repr": repr(value)[:limit]}
    return value if size <= limit else {"truncated": True, "bytes": size}


def creation(
    t: Tracking,
    task_id: str,
    name: str,
    *,
    args: Any = None,
    kwargs: Any = None,
    owner: str = "",
    queue: str | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    group_id: str | None = None,
    eta: str | None = None,
    rerun_of: str | None = None,
    ahead: bool = False,
) -> Change:
    """The change that creates a task's record (PENDING, seq 1) from what its message says, or
    `ahead` of its message, from its signature (see ahead_creations)."""
    now = time.time()
    at = utcnow()
    limit = t.settings.args_stored_bytes
    details = {
        "args": stored_json(list(args or ()), limit),
        "kwargs": stored_json(dict(kwargs or {}), limit),
        "queue": queue,
        "parent_id": parent_id,
        "root_id": root_id,
        "group_id": group_id,
        "eta": eta,
        "rerun_of": rerun_of,
    }
    fields = new_task_fields(
        task_id, name, at, owner, {k: v for k, v in details.items() if v is not None}
    )
    if ahead:
        fields["ahead"] = True
    return Change(task_id, fields, create=True, score=now, at=at, clock=now, parent_id=parent_id)


def message_embed(body: Any) -> dict[str, Any]:
    """What a task message carries beside its arguments (protocol 2): callbacks, errbacks, the
    chain's later steps (the next one last) and the chord's body."""
    if isinstance(body, list | tuple) and len(body) >= 3 and isinstance(body[2], dict):
        return body[2]
    return {}


def ahead_creations(t: Tracking, sent: Change, embed: dict[str, Any]) -> list[Change]:
    """The records to make when `sent` (the creation of a message being published) carries
    later work whose ids Celery has already handed out: its chain's later steps (each the
    child of the one before, whether a task, a group, a chord or a chain within a group) and
    its chord's body. Celery sends those messages only when the work before them is done; their
    records are made now, so that the ids apply_async returned can be followed at once. The
    backend ends them when a step before them fails, is cancelled or is ignored
    (RecordBackend._end_chain)."""
    fields = sent.set
    made: list[Change] = []

    def make(planned: list[Planned]) -> None:
        for signature, parent_id, group_id in planned:
            options = signature["options"]
            made.append(
                creation(
                    t,
                    options["task_id"],
                    signature["task"],
                    args=signature.get("args"),
                    kwargs=signature.get("kwargs"),
                    owner=fields.get("owner") or "",
                    queue=options.get("queue"),
                    parent_id=parent_id,
                    root_id=options.get("root_id") or fields.get("root_id"),
                    group_id=options.get("group_id") or group_id,
                    ahead=True,
                )
            )

    parent: str | None = sent.task_id
    for later in reversed(embed.get("chain") or []):
        planned, parent = plan(later, parent)
        make(planned)
        if parent is None:
            break
    make(plan(embed.get("chord"), None)[0])
    return made


# A plain task signature to record ahead, its parent's id and its group's.
Planned = tuple[dict[str, Any], str | None, str | None]


def plan(
    signature: Any, parent_id: str | None, group_id: str | None = None
) -> tuple[list[Planned], str | None]:
    """The plain tasks a signature (as a message carries it) will run, each with its parent,
    and the id of the task whose result the work after it follows (None after a group: its
    results are several). What has no task id (not yet frozen) is left out."""
    if not isinstance(signature, dict):
        return [], None
    kind = signature.get("subtask_type")
    kwargs = signature.get("kwargs") or {}
    if not kind:
        options = signature.get("options") or {}
        task_id = options.get("task_id")
        if not isinstance(task_id, str) or not isinstance(signature.get("task"), str):
            return [], None
        return [({**signature, "options": options}, parent_id, group_id)], task_id
    if kind == "chain":
        planned: list[Planned] = []
        last: str | None = parent_id
        for step in kwargs.get("tasks") or []:
            more, last = plan(step, last, group_id)
            planned += more
            if last is None:
                break
        return planned, last
    if kind == "group" or kind == "chord":
        members = kwargs.get("tasks") if kind == "group" else kwargs.get("header")
        if isinstance(members, dict):  # a chord's header, as a group
            members = (members.get("kwargs") or {}).get("tasks")
        own = (signature.get("options") or {}).get("task_id")
        planned = []
        for member in members if isinstance(members, list) else []:
            planned += plan(member, parent_id, own if isinstance(own, str) else None)[0]
        if kind == "group":
            return planned, None
        body, follows = plan(kwargs.get("body"), None)
        return planned + body, follows
    return [], None


def ahead_ids(signature: Any) -> list[str]:
    """The ids ahead_creations records for one later step of a chain."""
    return [planned[0]["options"]["task_id"] for planned in plan(signature, None)[0]]


def message_payload(body: Any) -> tuple[Any, Any]:
    """A task message's args and kwargs, for protocol 2 (a tuple) and protocol 1 (a dict)."""
    if isinstance(body, dict):
        return body.get("args"), body.get("kwargs")
    if isinstance(body, list | tuple) and len(body) >= 2:
        return body[0], body[1]
    return None, None


@dataclass
class _Submission:
    task_id: str
    outcome: Outcome | None = None


class NotRecorded(BaseException):
    """The record of a submission could not be created, so its message must not be sent.

    A BaseException because Celery's signal dispatch logs and swallows every Exception a handler
    raises; this one passes through to `submit`, which turns it back into the store's error.
    Only `submit` ever sees it: other producers' messages are sent anyway and recorded on receipt.
    """

    def __init__(self, cause: Exception):
        super().__init__(cause)
        self.cause = cause


class NotQueued(Exception):
    """The record was created but the message could not be sent."""

    def __init__(self, outcome: Outcome):
        super().__init__("the task could not be queued")
        self.outcome = outcome


def submission_headers(owner: str, rerun_of: str | None) -> dict[str, str]:
    """The message headers that carry a submission's caller (and the task it re-runs, if any)
    to its record, however it is published."""
    return {OWNER_HEADER: owner, **({RERUN_HEADER: rerun_of} if rerun_of else {})}


_submission: ContextVar[_Submission | None] = ContextVar("taskstream_submission", default=None)

# The id of the task whose message this context is publishing and recording itself
# (taskstream.fast_publish): before_task_publish leaves its record alone.
recording_here: ContextVar[str | None] = ContextVar("taskstream_recording_here", default=None)


def submit(
    task: Any, task_id: str, kwargs: dict[str, Any], owner: str, rerun_of: str | None = None
) -> Outcome:
    """Send one task as POST /tasks does and return the PENDING record before_task_publish made.

    One way to create a record: the route publishes like any producer; the signal handler
    records and hands its outcome back here. Raises the store's error when the record could not
    be created (nothing is sent then), NotQueued when the message could not be sent.
    """
    sub = _Submission(task_id)
    token = _submission.set(sub)
    try:
        headers = submission_headers(owner, rerun_of)
        task.apply_async(kwargs=kwargs, task_id=task_id, headers=headers)
    except NotRecorded as exc:
        raise exc.cause from None
    except Exception as exc:
        if sub.outcome is None:
            raise
        raise NotQueued(sub.outcome) from exc
    finally:
        _submission.reset(token)
    if sub.outcome is None:
        raise RuntimeError(f"task {task.name} was sent by an app taskstream does not track")
    return sub.outcome


def submitting(task_id: str) -> bool:
    """Whether this context is `submit` sending `task_id` (which handles its own failures)."""
    sub = _submission.get()
    return sub is not None and sub.task_id == task_id


def record_publish(t: Tracking, change: Change, ahead: list[Change] | None = None) -> None:
    """Create the record of a message about to be published (before_task_publish), and those of
    the later work it carries (`ahead`, see ahead_creations)."""
    sub = _submission.get()
    mine = sub is not None and sub.task_id == change.task_id
    try:
        outcome = t.publisher.record(change)
        if outcome.status is Status.EXISTS:
            t.publisher.fill_ahead(change)
        for later in ahead or ():
            if not t.made_ahead(later.task_id):
                t.publisher.record(later)
                t.note_ahead(later.task_id)
    except Exception as exc:
        if mine:
            raise NotRecorded(exc) from exc
        # The message goes out anyway: the worker records it on receipt.
        log.exception("could not record task %s when sent", change.task_id)
        return
    if mine and sub is not None:
        sub.outcome = outcome


# What `record` answers when Redis could not be reached: UNKNOWN, but not "no such task".
FAILED = Outcome(Status.UNKNOWN, None)


def record(app: Celery, change: Change) -> Outcome:
    """Record a change from a worker; failures are logged (the task goes on) and read FAILED."""
    try:
        return recorder(app).record(change)
    except Exception:
        log.exception("could not record %s for task %s", change.set.get("state"), change.task_id)
        return FAILED


def _recorded(app: Celery, change: Change, name: str | None) -> Outcome:
    """Record a change, first creating the task's record if it has none; raises what Redis does."""
    rec = recorder(app)
    outcome = rec.record(change)
    if outcome.status is Status.UNKNOWN:
        rec.record(creation(tracking(app), change.task_id, name or "unknown"))
        outcome = rec.record(change)
    return outcome


def record_or_create(app: Celery, change: Change, name: str | None) -> Outcome:
    """Record a change, first creating the task's record if it has none (a message from a
    producer that knows nothing of taskstream, a chain step Celery fails without sending)."""
    try:
        return _recorded(app, change, name)
    except Exception:
        log.exception("could not record %s for task %s", change.set.get("state"), change.task_id)
        return FAILED


# How long a worker waits for Redis to record how a task ended, beyond its client's own retries
# (about half a minute). A task's end is what its followers wait for: not recorded, it would be
# found again only when the message ran again, after VISIBILITY_TIMEOUT_SECONDS.
END_PATIENCE_SECONDS = 600.0


def record_last_change(
    app: Celery, change: Change, name: str | None, patience: float = END_PATIENCE_SECONDS
) -> Outcome:
    """record_or_create for a task's last change (SUCCESS, FAILURE, REVOKED): while Redis is
    away, the worker process waits for it (up to `patience`) rather than drop the outcome."""
    deadline = time.monotonic() + patience
    delay = 1.0
    while True:
        try:
            return _recorded(app, change, name)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                log.error("could not record %s for task %s: Redis away for %.0f s (%s)",
                          change.set.get("state"), change.task_id, patience,
                          type(exc).__name__)  # fmt: skip
                return FAILED
            log.warning("Redis is away: %s of task %s waits to be recorded (%s)",
                        change.set.get("state"), change.task_id, type(exc).__name__)  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        except Exception:
            log.exception("could not record %s for task %s",
                          change.set.get("state"), change.task_id)  # fmt: skip
            return FAILED


def error_fields(app: Celery, exc: BaseException, traceback: Any = None) -> dict[str, Any]:
    """What a task's `error` says about an exception (its class and text, for clients), and
    apart from it the exception's module and arguments, so that AsyncResult raises the same
    exception: `error_args` is None where the arguments have no JSON form (then the text)."""
    name = getattr(exc, "exc_cls_name", None) or type(exc).__name__
    module = getattr(exc, "exc_module", None) or type(exc).__module__
    error: dict[str, Any] = {"type": name, "message": str(exc)}
    if settings_of(app).expose_tracebacks and traceback is not None:
        error["traceback"] = (
            traceback if isinstance(traceback, str) else "".join(tb.format_tb(traceback))
        )
    try:
        args = jsonable(list(exc.args))
    except (TypeError, ValueError):
        args = None
    return {"error": error, "error_module": module, "error_args": args}


def record_started(app: Celery, request: Any) -> Status:
    """STARTED for the attempt `request` describes (after RETRY, for a retried one)."""
    attempt = request.retries or 0
    if attempt:
        # The retry's new message can be taken by another pool process before the old one
        # records RETRY (countdown=0): then record RETRY first, so the states stay in order;
        # the old one's late RETRY is refused as superseded.
        record(
            app,
            Change(
                request.id,
                {"state": TaskState.RETRY, "retries": attempt},
                only_if_retries_below=attempt,
            ),
        )
    now = time.time()
    fields = {
        "state": TaskState.STARTED,
        "retries": attempt,
        "error": None,
        "worker": request.hostname,
        "started_ts": now,
    }
    return record(app, Change(request.id, fields, {"started_at": utcnow()}, clock=now)).status


def record_retry(app: Celery, request: Any, exc: BaseException, traceback: Any = None) -> None:
    # While RETRY, `error` holds what made this attempt fail; the next STARTED clears it.
    attempt = (request.retries or 0) + 1
    fields = {"state": TaskState.RETRY, "retries": attempt, **error_fields(app, exc, traceback)}
    record(app, Change(request.id, fields, only_if_retries_below=attempt))
