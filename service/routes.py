"""The HTTP routes; docs/api.md is their reference."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from quart import Blueprint, Response, after_this_request, request, send_from_directory
from quart.typing import ResponseTypes
from quart_schema import validate_headers, validate_querystring, validate_response

from taskstream.record import Status, dumps, ending
from taskstream.recording import NotQueued
from taskstream.registry import REGISTRY, ArgumentsInvalid, bind_arguments
from taskstream.states import TERMINAL, TaskState
from taskstream.web import direct
from taskstream.web.auth import SESSION_COOKIE
from taskstream.web.disconnects import on_end
from taskstream.web.hub import Subscription
from taskstream.web.media import JSON, PROMETHEUS_TEXT
from taskstream.web.models import (
    GlobalStreamQuery,
    Health,
    ListQuery,
    PollHeaders,
    Readiness,
    Session,
    StreamHeaders,
    StreamQuery,
    StreamToken,
    SubmitBody,
    TaskTypes,
)
from taskstream.web.ops_routes import scrape
from taskstream.web.problems import Problem, field_errors
from taskstream.web.responses import NO_STORE, Answered, bodiless, json_response
from taskstream.web.security import check_submission_rate, current_caller, revoke_session
from taskstream.web.services import services
from taskstream.web.snapshots import linked, links
from taskstream.web.streams import (
    StreamBody,
    StreamOptions,
    global_stream,
    history_epoch,
    task_stream,
)

log = logging.getLogger(__name__)

bp = Blueprint("tasks", __name__)

_MAX_ID_LENGTH = 64
# How many tasks one list request may examine while filtering, so a filter that matches little
# costs a bounded amount; the cursor carries on from where it stopped.
_LIST_SCAN_LIMIT = 2_000


def _linked(data: str, task_id: str) -> str:
    return linked(data, task_id, request.root_path)


def _self_link(task_id: str) -> str:
    return links(task_id, request.root_path)["self"]


def _not_found(task_id: str) -> Problem:
    return Problem(
        404,
        "Task not found",
        f"No task {task_id!r} was accepted here, or it has expired.",
        kind="task-not-found",
    )


def _validation_problem(errors: list[dict[str, str]], detail: str) -> Problem:
    return Problem(422, "Invalid arguments", detail, kind="validation", errors=errors)


async def _read_json_body() -> Any:
    # application/json alone (any parameters, such as a charset): request.is_json would also
    # take every `+json` type, which the API does not say it reads.
    if request.mimetype != JSON:
        raise Problem(
            415,
            "Unsupported Media Type",
            "Send the request body as application/json.",
            kind="unsupported-media-type",
        )
    # Quart answers 413 here when the body is over MAX_CONTENT_LENGTH, before reading it all.
    raw = await request.get_data(cache=False, as_text=False)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Problem(
            400, "Malformed JSON", f"The body is not valid JSON: {exc}"[:300], kind="malformed-json"
        ) from None


@bp.post("/tasks")
async def submit() -> Response:
    payload = await _read_json_body()
    try:
        body = SubmitBody.model_validate(payload)
    except ValidationError as exc:
        raise _validation_problem(
            field_errors(exc), "The body must be {task, args?, kwargs?}."
        ) from None
    task_type = REGISTRY.get(body.task)
    if task_type is None:
        raise Problem(
            404,
            "Unknown task",
            f"There is no submittable task named {body.task!r}.",
            kind="unknown-task",
            available=sorted(REGISTRY),
        )
    try:
        kwargs = bind_arguments(task_type, body.args, body.kwargs)
    except ArgumentsInvalid as exc:
        raise _validation_problem(
            [e.as_dict() for e in exc.errors], f"The arguments do not fit {task_type.name}."
        ) from None

    svc = services()
    if len(dumps(kwargs)) > svc.settings.max_args_bytes:
        raise Problem(413, "Arguments too large",
                      f"The arguments take more than {svc.settings.max_args_bytes} bytes as JSON.",
                      kind="arguments-too-large")  # fmt: skip
    s = svc.settings
    await check_submission_rate(
        svc.run_script, svc.keys, s.submissions_per_window, s.rate_limit_window_seconds, svc.clock()
    )
    task_id = str(uuid.uuid4())
    try:
        created = await svc.submit(task_id, task_type.name, kwargs, current_caller().name)
    except NotQueued as exc:
        log.error("could not enqueue task %s: %s", task_id, type(exc.__cause__).__name__)
        error = {"type": "EnqueueError", "message": "the task could not be queued"}
        await svc.record.record(ending(task_id, {"state": TaskState.FAILURE, "error": error}))
        raise Problem(
            503,
            "Service Unavailable",
            "The task queue is not reachable; try again.",
            kind="queue-unavailable",
            headers={"Retry-After": "5"},
        ) from None
    svc.metrics.submitted += 1
    log.info("accepted task %s (%s)", task_id, task_type.name, extra={"task_id": task_id})
    return json_response(
        _linked(created.data or "", task_id), 202, {"Location": _self_link(task_id)}
    )


async def _check_owner(task_id: str) -> None:
    """Another caller's task is answered as if it did not exist."""
    caller = current_caller()
    if caller.admin:
        return
    owner = await services().record.owner(task_id)
    if owner is not None and not caller.sees(owner):
        raise _not_found(task_id)


async def _snapshot_or_404(task_id: str) -> str:
    data = None if len(task_id) > _MAX_ID_LENGTH else await services().record.get(task_id)
    if data is None:
        raise _not_found(task_id)
    await _check_owner(task_id)
    return data


def _none_match(if_none_match: str, etag: str) -> bool:
    """Whether If-None-Match names `etag` (RFC 9110 §13.1.2): `*` matches any current version,
    and tags compare whole and weakly (W/"7" is "7"), not as text within the header's ("17")."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)


@bp.get("/tasks/<task_id>")
@validate_headers(PollHeaders)
async def status(task_id: str, headers: PollHeaders) -> Response:
    data = await _snapshot_or_404(task_id)
    # The seq names the version: a poller sending If-None-Match gets 304 until the next change.
    etag = f'"{json.loads(data)["seq"]}"'
    if headers.if_none_match and _none_match(headers.if_none_match, etag):
        return bodiless(304, {"ETag": etag, "Cache-Control": "no-cache"})
    response = json_response(_linked(data, task_id), headers={"ETag": etag})
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.delete("/tasks/<task_id>")
async def cancel(task_id: str) -> Response:
    svc = services()
    if len(task_id) > _MAX_ID_LENGTH:
        raise _not_found(task_id)
    await _check_owner(task_id)
    # Recording REVOKED is the cancel: the terminal guard in the record makes it atomic against
    # the task finishing, so exactly one of them wins.
    outcome = await svc.record.record(ending(task_id, {"state": TaskState.REVOKED}))
    if outcome.status is Status.UNKNOWN:
        raise _not_found(task_id)
    if outcome.status is Status.TERMINAL:
        state = json.loads(outcome.data or "{}").get("state")
        raise Problem(
            409,
            "Task already finished",
            f"The task ended {state}; nothing to cancel.",
            kind="task-finished",
            state=state,
        )
    svc.metrics.cancelled += 1
    log.info("cancelled task %s", task_id, extra={"task_id": task_id})
    try:
        await svc.revoke(task_id)
    except Exception as exc:
        # REVOKED is recorded, and workers check the record before running a task.
        log.warning("revoke broadcast for %s failed: %s", task_id, type(exc).__name__)
    return json_response(_linked(outcome.data or "", task_id), 202)


def _stream_response(body: StreamBody | None) -> Response:
    """The stream's answer; with no body (a HEAD), the headers a GET would have."""
    if body is None:
        response = Response(b"", status=200)
    else:
        # However the request ends (even abandoned before its body is read), the stream gives
        # back its slot and subscription when the request's ASGI call returns.
        on_end(request.scope, body.release)
        response = Response(body, status=200)
    # Set by hand: Quart would add a charset to text/*, which the contract does not show.
    response.headers["Content-Type"] = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    # Quart cuts responses after 60 s by default; a stream lasts as long as its task.
    response.timeout = None
    return response


def _options() -> StreamOptions:
    s = services().settings
    return StreamOptions(
        keepalive_seconds=s.keepalive_seconds, retry_ms=s.sse_retry_ms, root=request.root_path
    )


def _nothing() -> None:
    pass


async def _subscribe(task_id: str | None) -> tuple[Subscription | None, Callable[[], None]]:
    """A stream slot and a hub subscription (one task's, or all with None), confirmed by Redis,
    and how to give both back, whichever way the response ends.

    For a HEAD, none (the slot is only tried, so that it answers as a GET would): Quart runs it
    through the GET handler, and it sends no changes, so a subscription made for it would only
    linger on the process and a stream that is never sent would hold its connection."""
    svc = services()
    caller = current_caller()
    slot = svc.slots.acquire(caller)
    if request.method == "HEAD":
        svc.slots.release(slot)
        return None, _nothing
    try:
        sub = await svc.hub.subscribe(task_id)
    except BaseException:
        svc.slots.release(slot)
        raise
    # A stream that came through a session ends with it (logout, or the cookie's end).
    forget = svc.sessions.watch(caller, sub)

    def cleanup() -> None:
        forget()
        svc.hub.unsubscribe(sub)
        svc.slots.release(slot)

    return sub, cleanup


@bp.get("/tasks/<task_id>/events")
@validate_querystring(StreamQuery)
@validate_headers(StreamHeaders)
async def task_events(task_id: str, query_args: StreamQuery, headers: StreamHeaders) -> Response:
    svc = services()
    after = headers.resume_after(query_args)
    if len(task_id) > _MAX_ID_LENGTH:
        raise _not_found(task_id)
    # Subscribe first, then read: a change made in between arrives on the subscription.
    sub, cleanup = await _subscribe(task_id)
    try:
        current = await svc.record.get(task_id)
        if current is None:
            raise _not_found(task_id)
        await _check_owner(task_id)
        snapshot = json.loads(current)
        if after == snapshot["seq"] and snapshot["state"] in TERMINAL:
            # Already seen the end: 204 tells EventSource to stop reconnecting. (An id beyond
            # the task's seq is from a history Redis has lost: the stream gives the task as it is.)
            cleanup()
            return bodiless(204)
    except BaseException:
        cleanup()
        raise
    if sub is None:
        return _stream_response(None)
    body = task_stream(
        sub, svc.record, task_id, current, after, _options(), direct.transport_for(request.scope)
    )
    return _stream_response(StreamBody(body, cleanup))


@bp.get("/events")
@validate_querystring(GlobalStreamQuery)
@validate_headers(StreamHeaders)
async def all_events(query_args: GlobalStreamQuery, headers: StreamHeaders) -> Response:
    svc = services()
    after = headers.resume_after(query_args)
    sub, cleanup = await _subscribe(None)
    try:
        current = await svc.record.global_seq()
        epoch = await history_epoch(svc.record)
        # A client that names the epoch its id came from, and it is not the current one: Redis
        # lost its history since, so the id means nothing now; start at the new history's start.
        if after is not None and query_args.epoch not in (None, epoch):
            after = 0
        # An id beyond the current sequence comes from before Redis lost its data: start from
        # now rather than wait, silently, for the sequence to catch up with it.
        if after is None or after > current:
            after = current
    except BaseException:
        cleanup()
        raise
    if sub is None:
        return _stream_response(None)
    body = global_stream(
        sub, svc.record, after, _options(), visible=current_caller().sees, epoch=epoch
    )
    return _stream_response(StreamBody(body, cleanup))


def _cookie_path() -> str:
    # The session belongs to this API only, wherever it is mounted, not to a host app beside it.
    return request.root_path + "/"


@bp.post("/session")
@validate_response(Session)
async def create_session() -> Answered:
    """Trade a bearer token for a signed, expiring, HttpOnly cookie (for browsers). With the
    cookie alone, the same session is signed again (with the current key) to the same end."""
    svc = services()
    caller = current_caller()
    if svc.auth.enabled:
        cookie, deadline = svc.auth.session_cookie(caller)
        secure = request.scheme == "https"

        @after_this_request
        async def set_cookie(response: ResponseTypes) -> ResponseTypes:
            response.set_cookie(
                SESSION_COOKIE, cookie, max_age=max(0, int(deadline - svc.clock())),
                httponly=True, samesite="Strict", secure=secure, path=_cookie_path(),
            )  # fmt: skip
            return response

    return Session(name=caller.name, admin=caller.admin), 200, NO_STORE


@bp.delete("/session")
async def end_session() -> Response:
    """Log out: the session (whichever credential this request came with) is revoked."""
    svc = services()
    session = svc.auth.session_of(request) if svc.auth.enabled else None
    for ended in (current_caller(), session):
        if ended is not None:
            await revoke_session(ended)
    response = bodiless(204)
    response.delete_cookie(SESSION_COOKIE, path=_cookie_path())
    return response


@bp.post("/tasks/<task_id>/stream-token")
@validate_response(StreamToken)
async def stream_token(task_id: str) -> Answered:
    """A short-lived token that opens this one task's stream, for an EventSource URL."""
    svc = services()
    await _snapshot_or_404(task_id)
    events = links(task_id, request.root_path)["events"]
    if not svc.auth.enabled:
        return StreamToken(token=None, events=events, expires_in=None), 200, NO_STORE
    token = svc.auth.stream_token(current_caller(), task_id)
    body = StreamToken(
        token=token,
        events=f"{events}?token={token}",
        expires_in=svc.settings.stream_token_seconds,
    )
    return body, 200, NO_STORE


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        return services().cursors.decode(cursor)
    except ValueError:
        raise Problem(
            400, "Bad cursor", "Use the `next` value of a previous page.", kind="bad-cursor"
        ) from None


@bp.get("/tasks")
@validate_querystring(ListQuery)
async def list_tasks(query_args: ListQuery) -> Response:
    svc = services()
    states = set(query_args.state)
    names = set(query_args.task)
    limit = query_args.limit
    max_score, passed = _decode_cursor(query_args.cursor) if query_args.cursor else (math.inf, 0)
    if query_args.until is not None and query_args.until < max_score:
        max_score, passed = query_args.until, 0
    since = query_args.since if query_args.since is not None else float("-inf")
    prefix, worker = query_args.id_prefix, query_args.worker

    caller = current_caller()

    async def select(page: list[tuple[str, float]]) -> list[str | None]:
        """Each task of `page` as it is listed, or None where it is hidden or filtered out."""
        ids = [t for t, _ in page]
        snapshots = await svc.record.get_many(ids)
        owners = await svc.record.owners(ids) if not caller.admin else [None] * len(ids)
        workers = await _workers_of(ids) if worker else [None] * len(ids)
        chosen: list[str | None] = []
        for task_id, data, owner, ran_on in zip(ids, snapshots, owners, workers, strict=True):
            visible = data is not None and (owner is None or caller.sees(owner))
            if visible and ((prefix and not task_id.startswith(prefix)) or
                            (worker and ran_on != worker)):  # fmt: skip
                visible = False
            if visible and (states or names):
                snap = json.loads(data or "{}")
                visible = (not states or snap["state"] in states) and (
                    not names or snap["task"] in names
                )
            chosen.append(_linked(data, task_id) if visible and data else None)
        return chosen

    items, next_at = await list_page(svc.record, select, limit, (max_score, passed), since)
    next_cursor = None if next_at is None else svc.cursors.encode(*next_at)
    body = '{"items":[' + ",".join(items) + '],"next":' + json.dumps(next_cursor) + "}"
    return json_response(body)


async def list_page(
    record: Any,
    select: Callable[[list[tuple[str, float]]], Awaitable[list[str | None]]],
    limit: int,
    after: tuple[float, int],
    since: float = float("-inf"),
) -> tuple[list[str], tuple[float, int] | None]:
    """Up to `limit` listed tasks, newest first, from the position `after`, and the position to
    go on from, or None when nothing more can follow.

    A position is (score, passed): tasks scored at most `score`, less the first `passed` of those
    scored exactly `score` (Redis lists ties in one fixed order, by id), so no tie is skipped or
    repeated. `select` says how each task of a batch is listed (None: hidden from this caller or
    filtered out). At most _LIST_SCAN_LIMIT tasks are examined per request, however few are
    visible: the page may then be short, and the position reached is returned, never None while
    more may exist.
    """
    max_score, passed = after
    items: list[str] = []
    scanned = 0
    while scanned < _LIST_SCAN_LIMIT:
        want = min(max(limit * 2, 50), _LIST_SCAN_LIMIT - scanned)
        # The ties already passed come first, then one more than a batch: whether there are more.
        fetch = passed + want + 1
        raw = await record.recent(max_score, fetch)
        more = len(raw) == fetch  # Redis had this many at least: there may be more
        ties = 0
        while ties < min(passed, len(raw)) and raw[ties][1] == max_score:
            ties += 1
        fresh = raw[ties:]
        page = fresh[:want]
        more = more or len(fresh) > want
        if page and page[-1][1] < since:
            # Newest first: past `since`, nothing further can match.
            page = [(t, sc) for t, sc in page if sc >= since]
            more = False
        chosen = await select(page)
        for (task_id, score), listed in zip(page, chosen, strict=True):
            scanned += 1
            if score == max_score:
                passed += 1
            else:
                max_score, passed = score, 1
            if listed is None:
                continue
            items.append(listed)
            if len(items) == limit:
                done = not more and (task_id, score) == page[-1]
                return items, None if done else (max_score, passed)
        if not more:
            return items, None
    return items, (max_score, passed)


async def _workers_of(task_ids: list[str]) -> list[str | None]:
    """The hostname of the worker that ran each task, where one has."""
    svc = services()
    async with svc.redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hget(svc.keys.task(task_id), "worker")
        raw = await pipe.execute()
    return [None if r is None else json.loads(r) for r in raw]


@bp.get("/task-types")
@validate_response(TaskTypes)
async def task_types() -> Answered:
    return TaskTypes.model_validate([t.describe() for t in REGISTRY.values()]), 200, NO_STORE


@bp.get("/healthz")
@validate_response(Health)
async def healthz() -> Answered:
    return Health(status="ok"), 200, NO_STORE


@bp.get("/readyz")
@validate_response(Readiness, 200)
@validate_response(Readiness, 503)
async def readyz() -> Answered:
    svc = services()
    try:
        async with asyncio.timeout(1):
            redis_ok = bool(await svc.redis.ping())
    except Exception:
        redis_ok = False
    subscriber = svc.hub.live
    ready = redis_ok and subscriber
    body = Readiness(
        status="ready" if ready else "not ready", redis=redis_ok, subscriber=subscriber
    )
    return body, 200 if ready else 503, NO_STORE


@bp.get("/metrics")
async def metrics() -> Response:
    svc = services()
    body = svc.metrics.render(svc.hub, await scrape(svc))
    return Response(body, content_type=PROMETHEUS_TEXT)


@bp.get("/")
async def dashboard() -> Response:
    return await send_from_directory(bp.root_path + "/static", "index.html")
