"""A Celery result backend whose store is the record: `AsyncResult` answers what GET /tasks/{id}
answers, and `get()` waits on the record's change announcements.

Set as the app's `result_backend` by taskstream.recording.track (init_celery). What a backend is
told, it records, for every task of the app whatever its class or `ignore_result`: SUCCESS
(`mark_as_done`), FAILURE (`mark_as_failure`, also for a worker lost mid-task), REVOKED
(`mark_as_revoked`) and whatever a task reports with `update_state`, which is progress whatever
the state's name (a task that says SUCCESS early still ends as it returns; one that says so and
raises Ignore ends so: `end_ignored`). STARTED and RETRY come from
the task hooks and signals instead (taskstream.tracked, taskstream.signals): Celery tells a
backend of those only for tasks that keep results.

Groups and chords reuse Celery's Redis machinery (the header's saved group, the chord's join
list and counters), under the deployment's prefix. That bookkeeping is only ever read to run a
chord's body; a task's state and result are read from the record alone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import redis
from celery import current_task, states
from celery.backends.asynchronous import BaseResultConsumer
from celery.backends.redis import RedisBackend
from celery.exceptions import Ignore, TaskRevokedError
from kombu.exceptions import EncodeError

from taskstream.progress import progress_of
from taskstream.record import (
    Change,
    Outcome,
    Status,
    ending,
    jsonable,
    split_announcement,
)
from taskstream.recording import (
    ahead_ids,
    error_fields,
    record,
    record_last_change,
    record_or_create,
    recorder,
    tracking,
)
from taskstream.states import TERMINAL, TaskState

log = logging.getLogger(__name__)

# What a Celery meta is made of, read with the snapshot: the exception's module is kept apart from
# `error` (clients see type and message) so that AsyncResult raises the task's own class.
_META_FIELDS = (
    "state",
    "progress",
    "result",
    "error",
    "finished_at",
    "worker",
    "error_module",
    "error_args",
)

# Recorded by the task hooks and signals, for every task; a backend hears of them only for tasks
# that keep results (and STARTED before the task could be stopped when cancelled). Said by the
# task itself with update_state, they are progress like any other state it names.
_NOT_STORED_HERE = frozenset({states.PENDING, states.RECEIVED, states.STARTED, states.RETRY})

# What Celery's tracer stores as STARTED for a task with track_started (celery.app.trace).
_TRACKED_START_KEYS = frozenset({"pid", "hostname"})


# Set while Celery stores a task's end through store_result (mark_as_failure, mark_as_revoked).
_ending: ContextVar[bool] = ContextVar("taskstream_ending", default=False)

# The text of the Ignore that Task.replace raises (celery.app.task).
_REPLACED = "Replaced by new task"


def replaced(retval: Any) -> bool:
    """Whether a task that ended IGNORED was replaced (Task.replace): it has not ended, its
    replacement runs under the same id."""
    return isinstance(retval, Ignore) and str(retval) == _REPLACED


def _running(task_id: str) -> bool:
    """Whether this is the task `task_id` itself, running."""
    return bool(current_task) and current_task.request.id == task_id


def _name(request: Any) -> str | None:
    name = getattr(request, "task", None) or getattr(request, "name", None)
    return name if isinstance(name, str) else None


def _exception(
    type_name: str, message: str, module: str | None, args: list[Any] | None = None
) -> dict[str, Any]:
    # Celery's own JSON form of an exception, turned back into one by exception_to_python: with
    # its arguments where they were kept, else its text.
    exc_message = args if isinstance(args, list) else [message]
    return {"exc_type": type_name, "exc_message": exc_message, "exc_module": module}


def _later_ids(request: Any) -> list[str]:
    """The ids recorded ahead for the chain steps after `request`'s task (ahead_creations)."""
    steps = getattr(request, "chain", None) if request is not None else None
    return [i for step in (steps if isinstance(steps, list) else ()) for i in ahead_ids(step)]


def meta_of(task_id: str, values: dict[str, Any], children: list[str]) -> dict[str, Any]:
    """Celery's meta of a task (status, result, traceback, children, date_done) from its record."""
    state = values.get("state")
    error = values.get("error") or {}
    result: Any = None
    status = state
    if state == TaskState.PROGRESS:
        progress = values.get("progress") or {}
        status = progress.get("state") or TaskState.PROGRESS
        if status in states.READY_STATES or status in states.EXCEPTION_STATES:
            # update_state(state=SUCCESS) from a task still running: AsyncResult is not ready
            # (get() waits) until the task has ended, as the record says. (And RETRY said so
            # holds no exception for AsyncResult to read.)
            status = TaskState.PROGRESS
        if "meta" in progress:
            result = progress["meta"]
        else:
            result = {k: progress.get(k) for k in ("current", "total", "percent", "message")}
    elif state == TaskState.STARTED:
        result = {"hostname": values.get("worker")}
    elif state == TaskState.SUCCESS:
        result = values.get("result")
    elif state in (TaskState.FAILURE, TaskState.RETRY):
        result = _exception(
            error.get("type", "Exception"),
            error.get("message", ""),
            values.get("error_module"),
            values.get("error_args"),
        )
    elif state == TaskState.REVOKED:
        result = _exception(
            "TaskRevokedError", error.get("message") or "revoked", "celery.exceptions"
        )
    return {
        "task_id": task_id,
        "status": status,
        "result": result,
        "traceback": error.get("traceback"),
        "children": [[[child, None], None] for child in children],
        "date_done": values.get("finished_at"),
    }


class _PubSub(redis.client.PubSub):
    """redis-py's PubSub, noting when it connected and subscribed again by itself (the record's
    client retries on a lost connection, so no error reaches Celery's reconnect_on_error):
    whatever was announced meanwhile was lost to it. Redis drops a subscriber whose unread
    messages pass its pub/sub output limit (32 MB by default), as one large result can."""

    reconnected = False

    def on_connect(self, connection: Any) -> None:
        if self.channels:
            self.reconnected = True
        super().on_connect(connection)


def _pubsub(client: Any) -> _PubSub:
    return _PubSub(
        client.connection_pool, event_dispatcher=getattr(client, "_event_dispatcher", None)
    )


class RecordResultConsumer(BaseResultConsumer):
    """Waits on the record's announcements: each awaited task's own channel, as Celery's Redis
    backend does with its own keys.

    A task's state is read only once its channel's subscription is confirmed, so no change
    between the read and the subscription is lost. One pub/sub connection per backend, used
    under one lock (redis-py's PubSub is not thread-safe); it is closed when nothing is awaited.
    """

    _connection_errors = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._reset_sync()

    def _reset_sync(self) -> None:
        self._lock = threading.RLock()
        self._pubsub: Any = None
        self._channels: set[str] = set()
        self._unconfirmed: set[str] = set()
        self._leaving: set[str] = set()
        # Subscribed again after a lost connection: the awaited tasks are read from the record
        # once the subscriptions are confirmed.
        self._missed = False

    def on_after_fork(self) -> None:
        # The parent's subscription socket is not ours to read or close.
        self._reset_sync()

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        self.consume_from(initial_task_id)

    def consume_from(self, task_id: str) -> None:
        channel = self.backend.keys.task_channel(task_id)
        with self._lock:
            self._leaving.discard(channel)
            self._leave()
            if channel in self._channels:
                return
            # Noted first: a reconnection subscribes to every channel noted.
            self._channels.add(channel)
            self._unconfirmed.add(channel)
            with self.reconnect_on_error():
                if self._pubsub is None:
                    self._pubsub = _pubsub(self.backend.client)
                self._pubsub.subscribe(channel)

    def cancel_for(self, task_id: str) -> None:
        # Never blocks: it also runs from AsyncResult.__del__, in whatever thread the garbage
        # collector picked, and then must not wait on the network either (with Redis away, an
        # UNSUBSCRIBE is retried for half a minute). Closing the connection when nothing is
        # awaited any more is local; an UNSUBSCRIBE waits for the next wait or drain.
        self._leaving.add(self.backend.keys.task_channel(task_id))
        if self._lock.acquire(blocking=False):
            try:
                self._leave(send=False)
            finally:
                self._lock.release()

    def _leave(self, send: bool = True) -> None:
        """Stop hearing what is no longer awaited (under the lock); `send`: from a thread that
        may wait on Redis."""
        if not send:
            if self._leaving >= self._channels:  # nothing awaited: closing is local
                self._leaving.clear()
                self._channels.clear()
                self._unconfirmed.clear()
                self._close()
            return
        left = []
        while self._leaving:
            channel = self._leaving.pop()
            if channel in self._channels:
                self._channels.discard(channel)
                self._unconfirmed.discard(channel)
                left.append(channel)
        if not self._channels:
            self._close()
        elif left and self._pubsub is not None:
            with self.reconnect_on_error():
                self._pubsub.unsubscribe(*left)

    def stop(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                log.debug("closing the result subscription failed", exc_info=True)
            self._pubsub = None

    def _confirm(self) -> None:
        """Wait for the replies to the subscriptions sent so far, handling what arrives."""
        deadline = time.monotonic() + 10
        while self._unconfirmed and self._pubsub is not None:
            if time.monotonic() > deadline:
                raise redis.TimeoutError("no confirmation of a result subscription")
            self._read_one(1.0)

    def _read_one(self, timeout: float) -> None:
        with self.reconnect_on_error():
            message = self._pubsub.get_message(timeout=timeout)
        pubsub = self._pubsub
        if pubsub is not None and pubsub.reconnected:
            # Before the message, which may be the first confirmation of the new subscriptions.
            pubsub.reconnected = False
            self._unconfirmed = set(self._channels)
            self._missed = True
        if not message:
            return
        if message["type"] == "subscribe":
            self._unconfirmed.discard(message["channel"])
        elif message["type"] == "message":
            self._on_announcement(message["data"])

    def on_wait_for_pending(self, result: Any, timeout: float | None = None, **kw: Any) -> None:
        with self._lock:
            self._confirm()
        for meta in result._iter_meta(**kw):
            if meta is not None:
                self.on_state_change(meta, None)

    def _waited_on(self, task_id: str) -> bool:
        return any(task_id in mapping for mapping in self._pending_results)

    def drain_events(self, timeout: float | None = None) -> None:
        wait = 1.0 if timeout is None else timeout
        # Short reads under the lock, so threads waiting on other results take turns.
        if not self._lock.acquire(timeout=wait):
            return
        reread = idle = False
        try:
            self._leave()
            if self._pubsub is None:
                idle = True
            else:
                self._read_one(min(wait, 0.2))
                if self._missed and not self._unconfirmed:
                    self._missed, reread = False, True
        finally:
            self._lock.release()
        if reread:
            self._read_ready()
        elif idle:
            time.sleep(min(wait, 0.2))

    def _on_announcement(self, data: str) -> None:
        header, snapshot = split_announcement(data)
        if not self._waited_on(header.task_id):
            return
        if header.state in TERMINAL or (
            header.state == TaskState.STARTED and self.on_message is not None
        ):
            # One read for the few fields the snapshot leaves out (the exception's module, the
            # worker that started it).
            meta = self.backend.get_task_meta(header.task_id, cache=False)
        elif self.on_message is not None:
            meta = self.backend.meta_from_decoded(meta_of(header.task_id, json.loads(snapshot), []))
        else:
            return
        self.on_state_change(meta, None)

    def _reconnect(self) -> None:
        # Changes may have been announced while the connection was down: read them instead.
        with self._lock:
            self._close()
            if self._channels:
                self._pubsub = _pubsub(self.backend.client)
                self._pubsub.subscribe(*self._channels)
                self._unconfirmed = set(self._channels)
                self._confirm()
        self._read_ready()

    def _read_ready(self) -> None:
        """Read the awaited tasks from the record: those that ended were perhaps announced while
        the subscription was down."""
        for mapping in list(self._pending_results):
            for task_id in list(mapping):
                meta = self.backend.get_task_meta(task_id, cache=False)
                if meta["status"] in states.READY_STATES:
                    self.on_state_change(meta, None)


class RecordBackend(RedisBackend):
    """Celery's result backend, answered from (and written to) the record."""

    ResultConsumer = RecordResultConsumer

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.pop("url", None)
        super().__init__(*args, **kwargs)
        self.keys = tracking(self.app).keys

    def _add_global_keyprefix(self) -> None:
        # Celery's group and chord keys, under the deployment's prefix.
        prefix = tracking(self.app).keys.celery_result_prefix
        self.task_keyprefix = f"{prefix}celery-task-meta-"
        self.group_keyprefix = f"{prefix}celery-taskset-meta-"
        self.chord_keyprefix = f"{prefix}chord-unlock-"

    @property
    def client(self) -> Any:
        # The record's own client for this process (a new one in each prefork child).
        return recorder(self.app).client

    def as_uri(self, include_password: bool = False) -> str:
        return "taskstream://record"

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # Nothing to subscribe to when sending: a wait subscribes for as long as it lasts.
        pass

    # Reading -------------------------------------------------------------------------------

    def _read(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        keys = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(keys.task(task_id), _META_FIELDS)
                pipe.smembers(keys.children(task_id))
            raw = pipe.execute()
        metas: list[dict[str, Any] | None] = []
        for task_id, values, children in zip(task_ids, raw[::2], raw[1::2], strict=True):
            if values[0] is None:
                metas.append(None)
                continue
            decoded = {
                name: None if value is None else json.loads(value)
                for name, value in zip(_META_FIELDS, values, strict=True)
            }
            metas.append(self.meta_from_decoded(meta_of(task_id, decoded, sorted(children))))
        return metas

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        meta = self._read([task_id])[0]
        # Celery's answer for an id it knows nothing of.
        return meta or {"status": states.PENDING, "result": None}

    def task_result_exists(self, task_id: str) -> bool:
        return bool(self.client.exists(self.keys.task(task_id)))

    def get_many(
        self,
        task_ids: Any,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        max_iterations: int | None = None,
        READY_STATES: frozenset[str] = states.READY_STATES,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        ids = set(task_ids)
        iterations = 0
        while ids:
            ordered = list(ids)
            for task_id, meta in zip(ordered, self._read(ordered), strict=True):
                if meta is not None and meta["status"] in READY_STATES:
                    ids.discard(task_id)
                    if meta["status"] == states.SUCCESS:
                        self._cache[task_id] = meta
                    if on_message is not None:
                        on_message(meta)
                    yield task_id, meta
            iterations += 1
            if not ids or (max_iterations and iterations >= max_iterations):
                return
            if timeout and iterations * interval >= timeout:
                raise TimeoutError(f"operation timed out ({timeout})")
            if on_interval:
                on_interval()
            time.sleep(interval)

    def _forget(self, task_id: str) -> None:
        # The record keeps a task for TASK_TTL_SECONDS whatever Celery forgets.
        pass

    # Writing -------------------------------------------------------------------------------

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # What reaches here is update_state (or a caller's own store_result): the outcomes Celery
        # knows of come through mark_as_done, mark_as_failure and mark_as_revoked.
        if state in _NOT_STORED_HERE and not self._said_by_task(task_id, result, state):
            return result
        if state in states.READY_STATES and (_ending.get() or not _running(task_id)):
            # Stored from outside the task (a script closing a task by hand): its outcome.
            self._record_end(task_id, result, state, traceback, request)
        else:
            self._record_progress(task_id, result, state, request)
        return result

    @staticmethod
    def _said_by_task(task_id: str, result: Any, state: str) -> bool:
        """Whether the running task said this state itself (update_state), rather than Celery
        storing the start of a task with track_started."""
        if not _running(task_id):
            return False
        return not (
            state == states.STARTED
            and isinstance(result, dict)
            and result.keys() == _TRACKED_START_KEYS
        )

    def _record_progress(self, task_id: str, result: Any, state: str, request: Any) -> Outcome:
        """update_state from the running task, whatever the state's name: SUCCESS or FAILURE
        said there is news, not the end (the task runs on, and how it returns or what it raises
        is its outcome), as with Celery's own backends, where the task's end overwrites it."""
        outcome = record_or_create(
            self.app,
            Change(task_id, {"state": TaskState.PROGRESS, "progress": progress_of(state, result)}),
            _name(request),
        )
        if outcome.status is Status.TERMINAL and _running(task_id):
            # update_state from a task that was cancelled: it stops here, as with
            # report_progress.
            raise Ignore()
        return outcome

    def _record_end(
        self, task_id: str, result: Any, state: str, traceback: Any, request: Any
    ) -> Outcome:
        if state == states.SUCCESS:
            fields: dict[str, Any] = {"state": TaskState.SUCCESS, "result": result}
        else:
            fields = {"state": state}
            if state == states.FAILURE:
                fields.update(error_fields(self.app, self._as_exception(result), traceback))
            elif state == states.REVOKED and isinstance(result, BaseException) and str(result):
                # Celery's reason (expired, terminated, revoked): a task that expired before
                # it ran is told from one that was cancelled.
                fields["error"] = {"type": type(result).__name__, "message": str(result)}
        return record_last_change(self.app, ending(task_id, fields), _name(request))

    def end_ignored(self, task_id: str, exc: BaseException, request: Any) -> None:
        """The running task raised Ignore (task_postrun): Celery stores nothing then, and the
        record would stay STARTED for ever. It ends as the task last said with update_state
        (Celery's documented way to end a task with a state of one's own), else as REVOKED
        with the reason, so that its followers are told it is over."""
        if replaced(exc):
            # The replacement was sent with this task's id and records its end.
            return
        found = recorder(self.app).fields(task_id, ["state", "progress"])
        if found is None or found[0] in TERMINAL:
            return
        state, progress = found
        said = (progress or {}).get("state") if state == TaskState.PROGRESS else None
        if isinstance(said, str) and said in states.READY_STATES:
            self._record_end(task_id, (progress or {}).get("meta"), said, None, request)
        else:
            error = {"type": "Ignore", "message": str(exc) or "the task raised Ignore"}
            fields = {"state": TaskState.REVOKED, "error": error}
            record_last_change(self.app, ending(task_id, fields), _name(request))
        self._end_chain(task_id, request, "ended by raising Ignore")

    def _as_exception(self, result: Any) -> BaseException:
        """The exception a FAILURE was stored with: as raised, or given in Celery's own JSON form
        (`update_state(state=FAILURE, meta={"exc_type": ..., "exc_message": [...]})`)."""
        if isinstance(result, BaseException):
            return result
        if isinstance(result, dict) and isinstance(result.get("exc_type"), str):
            args = result.get("exc_message")
            args = list(args) if isinstance(args, list | tuple) else [args]
            given = {
                "exc_type": result["exc_type"],
                "exc_module": result.get("exc_module") or "builtins",
                "exc_message": args,
            }
            try:
                exc = self.exception_to_python(given)
            except Exception:  # Celery refuses what is not an exception class
                exc = None
            if isinstance(exc, BaseException):
                return exc
        return Exception(str(result))

    def mark_as_started(self, task_id: str, **meta: Any) -> Any:
        return meta

    def mark_as_retry(
        self,
        task_id: str,
        exc: BaseException,
        traceback: Any = None,
        request: Any = None,
        store_result: bool = True,
        state: str = states.RETRY,
    ) -> None:
        # Recorded by the task_retry signal, with the failure, for every task: stored here from
        # inside the running task it would read as the task saying RETRY with update_state.
        return None

    def mark_as_done(
        self,
        task_id: str,
        result: Any,
        request: Any = None,
        store_result: bool = True,
        state: str = states.SUCCESS,
    ) -> None:
        # Recorded whatever the task's ignore_result: the record follows every task.
        try:
            result = jsonable(result)
        except (TypeError, ValueError) as exc:
            error = {"type": "ResultNotJSON", "message": f"the result is not JSON: {exc}"}
            fields = {"state": TaskState.FAILURE, "error": error}
            record_or_create(self.app, ending(task_id, fields), _name(request))
            # Celery then fails the task as it would with its own JSON backend.
            raise EncodeError(str(exc)) from exc
        outcome = self._record_end(task_id, result, state, None, request)
        if request and request.chord:
            if (
                outcome.status is Status.TERMINAL
                and (outcome.snapshot or {}).get("state") == TaskState.REVOKED
            ):
                # Cancelled while it ran: the chord hears what the record says.
                state, result = states.REVOKED, TaskRevokedError("revoked")
            self.on_chord_part_return(request, state, result)

    def mark_as_failure(
        self,
        task_id: str,
        exc: BaseException,
        traceback: Any = None,
        request: Any = None,
        store_result: bool = True,
        call_errbacks: bool = True,
        state: str = states.FAILURE,
    ) -> None:
        # Celery stores the failure (and that of the chain's steps after it) with store_result,
        # which otherwise takes update_state's FAILURE from the task as news, not its end.
        token = _ending.set(True)
        try:
            super().mark_as_failure(
                task_id,
                exc,
                traceback,
                request,
                store_result=True,
                call_errbacks=call_errbacks,
                state=state,
            )
        finally:
            _ending.reset(token)
        # Celery fails the later steps it can name (a task's, a chord's body), not a group's
        # members nor a chord's header, which were recorded ahead too and will never be sent.
        later = _later_ids(request)
        if later:
            fields = {"state": TaskState.FAILURE, **error_fields(self.app, exc, traceback)}
            for one in later:
                record(self.app, ending(one, fields))

    def mark_as_revoked(
        self,
        task_id: str,
        reason: str = "",
        request: Any = None,
        store_result: bool = True,
        state: str = states.REVOKED,
    ) -> None:
        token = _ending.set(True)
        try:
            super().mark_as_revoked(task_id, reason, request, store_result=True, state=state)
        finally:
            _ending.reset(token)
        self._end_chain(task_id, request, "was cancelled")

    def _end_chain(self, task_id: str, request: Any, what: str) -> None:
        """The chain's later steps, whose records were made ahead of their messages, will never
        be sent: Celery stops a chain at a step that is cancelled or ignored (it fails the rest
        only when a step fails). They end REVOKED, saying which step stopped them."""
        error = {"type": "TaskRevokedError", "message": f"not run: task {task_id} before it {what}"}
        for later in _later_ids(request):
            record(self.app, ending(later, {"state": TaskState.REVOKED, "error": error}))
