"""The operations API behind the dashboard: workers, queues, throughput, a task's detail and
timeline, and re-running a task. Workers are read from what they record about themselves
(taskstream.workers); nothing here asks a worker anything.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from quart import Blueprint, Response, request
from quart_schema import validate_response

from taskstream.monitor import HOUR_MINUTES, OUTCOMES, Worker, runtime_summary
from taskstream.record import ending
from taskstream.recording import NotQueued
from taskstream.registry import REGISTRY, ArgumentsInvalid, bind_arguments
from taskstream.states import TaskState
from taskstream.web import ops_models as om
from taskstream.web.metrics import Scrape
from taskstream.web.problems import Problem
from taskstream.web.responses import NO_STORE, Answered, json_response
from taskstream.web.security import check_submission_rate, current_caller
from taskstream.web.services import Services, services
from taskstream.web.snapshots import linked, links

log = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

_MAX_ID_LENGTH = 64
# Counts per state cover at most this many of the newest tasks, so a count costs a bounded read.
COUNT_LIMIT = 10_000


def _not_found(task_id: str) -> Problem:
    return Problem(404, "Task not found",
                   f"No task {task_id!r} was accepted here, or it has expired.",
                   kind="task-not-found")  # fmt: skip


async def _task_names(svc: Services) -> list[str]:
    # The closed set of names metrics and charts are labelled with: the submittable tasks and
    # those the workers have run (names their apps register).
    ran = await svc.redis.smembers(svc.keys.task_names)
    return sorted(set(REGISTRY) | set(ran))


def _reserved_by_queue(workers: list[Worker]) -> dict[str, int]:
    reserved: dict[str, int] = {}
    for w in workers:
        if w.online:
            for q in w.queues:
                # A worker's reserved tasks are shared out among its queues (usually one).
                reserved[q] = reserved.get(q, 0) + w.reserved // max(1, len(w.queues))
    return reserved


async def scrape(svc: Services) -> Scrape:
    """Everything `/metrics` reads from Redis and the broker, read before it is written out."""
    workers = await svc.monitor.workers()
    queues = {q for w in workers if w.online for q in w.queues}
    return Scrape(
        stats=await svc.monitor.stats(await _task_names(svc)),
        workers=workers,
        depths=await svc.queue_depths.read(queues),
        reserved=_reserved_by_queue(workers),
    )


@bp.get("/workers")
@validate_response(om.Workers)
async def workers() -> Answered:
    svc = services()
    found = await svc.monitor.workers()
    body = om.Workers(
        workers=[om.WorkerInfo(**vars(w)) for w in found],
        offline_after=svc.settings.worker_offline_seconds,
        now=time.time(),
    )
    return body, 200, NO_STORE


@bp.get("/queues")
@validate_response(om.Queues)
async def queues() -> Answered:
    svc = services()
    found = [w for w in await svc.monitor.workers() if w.online]
    names = sorted({q for w in found for q in w.queues})
    depths = await svc.queue_depths.read(names)
    reserved = _reserved_by_queue(found)
    body = om.Queues(
        queues=[
            om.QueueInfo(
                name=name,
                depth=None if depths is None else depths.get(name, 0),
                reserved=reserved.get(name, 0),
                workers=[w.hostname for w in found if name in w.queues],
            )
            for name in names
        ],
        broker=depths is not None,
    )
    return body, 200, NO_STORE


# What /stats reads of each of the newest tasks: its state and owner, to count it; for a caller
# who is not an admin, whose throughput is that of its own tasks, how and when it ended too.
_COUNT_FIELDS = ["state", "owner"]
_OWN_STATS_FIELDS = [*_COUNT_FIELDS, "task", "finished_at", "runtime"]


async def _visible_rows(svc: Services) -> list[list[Any]]:
    """The newest tasks (up to COUNT_LIMIT) the caller may see: their fields, decoded."""
    ids = [t for t, _ in await svc.record.recent(float("inf"), COUNT_LIMIT)]
    caller = current_caller()
    # The dashboard asks every two seconds: an admin's rows are not read past what it counts.
    fields = _COUNT_FIELDS if caller.admin else _OWN_STATS_FIELDS
    async with svc.redis.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hmget(svc.record.keys.task(task_id), fields)
        rows = await pipe.execute()
    visible = []
    for row in rows:
        if row[0] is None:
            continue
        decoded = [None if value is None else json.loads(value) for value in row]
        if caller.admin or caller.sees(decoded[1] or ""):
            visible.append(decoded)
    return visible


def _own_throughput(rows: list[list[Any]], names: list[str], now: float) -> dict[str, Any]:
    """Throughput as the workers' figures give it (Monitor.throughput), from the caller's own
    tasks: how each ended (a retried attempt is not counted apart) and how long it ran."""
    last = int(now // 60)
    minutes = {
        m: dict.fromkeys(map(str, OUTCOMES), 0) for m in range(last - HOUR_MINUTES + 1, last + 1)
    }
    runtimes: dict[str, list[float]] = {name: [] for name in names}
    for state, _, task, finished_at, runtime in rows:
        if state not in OUTCOMES or not isinstance(finished_at, str):
            continue
        try:
            ended = datetime.fromisoformat(finished_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        minute = minutes.get(int(ended // 60))
        if minute is None:
            continue  # not in the last hour
        minute[state] += 1
        if task in runtimes and isinstance(runtime, int | float) and state != TaskState.REVOKED:
            runtimes[task].append(float(runtime))
    summaries = [runtime_summary(name, values) for name, values in runtimes.items()]
    per_minute = [{"minute": m * 60, **counts} for m, counts in sorted(minutes.items())]
    return {"per_minute": per_minute, "runtimes": summaries}


@bp.get("/stats")
@validate_response(om.Stats)
async def stats() -> Answered:
    svc = services()
    rows = await _visible_rows(svc)
    states = {str(s): 0 for s in TaskState}
    for row in rows:
        states[row[0]] = states.get(row[0], 0) + 1
    if current_caller().admin:
        throughput = await svc.monitor.throughput(await _task_names(svc))
    else:
        # Not the deployment's figures, which would tell one caller how much the others send.
        throughput = _own_throughput(rows, await _task_names(svc), time.time())
    body = om.Stats(states=states, counted=len(rows), **throughput)
    return body, 200, NO_STORE


async def _visible(svc: Services, task_id: str) -> str:
    """The task's snapshot, if it exists and the caller may see it; else 404."""
    data = None if len(task_id) > _MAX_ID_LENGTH else await svc.record.get(task_id)
    if data is None:
        raise _not_found(task_id)
    caller = current_caller()
    if not caller.admin:
        owner = await svc.record.owner(task_id)
        if owner is not None and not caller.sees(owner):
            raise _not_found(task_id)
    return data


async def _details(svc: Services, task_id: str) -> dict[str, Any]:
    return await svc.record.details(task_id) or {}


def _timeline(changes: list[tuple[int, str]]) -> list[dict[str, Any]]:
    entries = []
    for seq, data in changes:
        snap = json.loads(data)
        progress = snap.get("progress")
        entries.append(
            {
                "seq": seq,
                "state": snap["state"],
                "at": snap.get("updated_at") or "",
                "progress": progress,
                "message": progress.get("message") if isinstance(progress, dict) else None,
            }
        )
    return entries


@bp.get("/tasks/<task_id>/detail")
async def task_detail(task_id: str) -> Response:
    svc = services()
    data = await _visible(svc, task_id)
    details = await _details(svc, task_id)
    changes = await svc.record.changes_after(task_id, 0)
    # The snapshot goes in as stored (numbers exactly as recorded) with its links.
    fields = {k: v for k, v in details.items() if k in om.TaskDetail.model_fields}
    rest = om.TaskDetail.model_validate(
        {
            "snapshot": json.loads(linked(data, task_id, request.root_path)),
            "timeline": _timeline(changes),
            **fields,
        }
    ).model_dump_json(exclude={"snapshot"})
    body = '{"snapshot":' + linked(data, task_id, request.root_path) + "," + rest[1:]
    return json_response(body)


@bp.post("/tasks/<task_id>/rerun")
async def rerun(task_id: str) -> Response:
    """A new task of the same name with the same arguments, linked to the original."""
    svc = services()
    original = json.loads(await _visible(svc, task_id))
    task_type = REGISTRY.get(original["task"])
    if task_type is None:
        raise Problem(409, "Cannot re-run",
                      f"{original['task']!r} is not a task that may be submitted here.",
                      kind="rerun-refused")  # fmt: skip
    details = await _details(svc, task_id)
    args, kwargs = details.get("args") or [], details.get("kwargs") or {}
    if not details or _truncated(args) or _truncated(kwargs):
        raise Problem(409, "Cannot re-run",
                      "The task's arguments were not kept in full (over the size cap, or "
                      "recorded before arguments were kept).", kind="rerun-refused")  # fmt: skip
    try:
        bound = bind_arguments(task_type, list(args), dict(kwargs))
    except (ArgumentsInvalid, TypeError, ValueError):
        raise Problem(409, "Cannot re-run",
                      f"The kept arguments no longer fit {task_type.name}.",
                      kind="rerun-refused") from None  # fmt: skip
    s = svc.settings
    await check_submission_rate(
        svc.run_script, svc.keys, s.submissions_per_window, s.rate_limit_window_seconds, svc.clock()
    )
    new_id = str(uuid.uuid4())
    try:
        created = await svc.submit(
            new_id, task_type.name, bound, current_caller().name, rerun_of=task_id
        )
    except NotQueued as exc:
        log.error("could not enqueue re-run %s: %s", new_id, type(exc.__cause__).__name__)
        error = {"type": "EnqueueError", "message": "the task could not be queued"}
        await svc.record.record(ending(new_id, {"state": TaskState.FAILURE, "error": error}))
        raise Problem(503, "Service Unavailable", "The task queue is not reachable; try again.",
                      kind="queue-unavailable", headers={"Retry-After": "5"}) from None  # fmt: skip
    svc.metrics.submitted += 1
    log.info("re-ran task %s as %s", task_id, new_id, extra={"task_id": new_id})
    location = links(new_id, request.root_path)["self"]
    return json_response(
        linked(created.data or "", new_id, request.root_path), 202, {"Location": location}
    )


def _truncated(value: Any) -> bool:
    return isinstance(value, dict) and value.get("truncated") is True and "bytes" in value
