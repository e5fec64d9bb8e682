"""The shapes that cross the HTTP boundary, as pydantic models.

The routes validate with them (`SubmitBody`, and the query and header models through
quart-schema's decorators), and the OpenAPI document (service/openapi.py) is generated from them,
so the document cannot drift from what is checked.
The snapshot itself is written by the record's Lua script; `TaskSnapshot` describes it, and the
tests check real answers against the document.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    Json,
    RootModel,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError
from pydantic_core import core_schema as cs
from quart import current_app

from taskstream.registry import REGISTRY
from taskstream.states import TaskState
from taskstream.web.media import EVENT_STREAM, HTML, PROBLEM_JSON, PROMETHEUS_TEXT
from taskstream.web.problems import Invalid

State = TaskState

# The largest event id a client may send back (Redis stream ids are 64-bit).
MAX_EVENT_ID = 2**63 - 1


class Progress(BaseModel):
    """How far a running task has got, as its latest `PROGRESS` change reported."""

    current: float | None = Field(
        description="Work done so far, in the task's own units; null when the task said none."
    )
    total: float | None = Field(description="Work in all, when the task knows it.")
    percent: float | None = Field(
        ge=0, le=100, description="current / total as a percentage, one decimal; null if no total."
    )
    message: str | None = Field(description="What the task says it is doing.")
    meta: Any = Field(
        None, description="The whole `meta` a task passed to Celery's `update_state`, if it did."
    )
    state: str | None = Field(
        None,
        description="The state a task named in `update_state` when it was not PROGRESS (Celery "
        "allows any name); AsyncResult answers with it.",
    )


class TaskError(BaseModel):
    """Why a task failed (`FAILURE`), or why its latest attempt failed (`RETRY`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The exception's class name.")
    message: str = Field(description="The exception's message.")
    traceback: str | None = Field(None, description="Only when the operator turned tracebacks on.")


class TaskLinks(BaseModel):
    self: str = Field(description="The task's snapshot: GET it to poll, DELETE it to cancel.")
    events: str = Field(description="The task's event stream.")


class TaskSnapshot(BaseModel):
    """The task as it stands after its latest change: every poll answer and every stream event."""

    id: str = Field(description="The task's id, assigned on submission.")
    task: str = Field(description="The registered task's name.")
    state: State = Field(description="Celery's name for the task's state.")
    seq: int = Field(
        ge=1, description="Counts this task's changes, 1, 2, 3 …; the stream's event id."
    )
    progress: Progress | None = Field(description="The latest progress report, if any.")
    result: Any = Field(description="The task's JSON return value once `SUCCESS`, else null.")
    error: TaskError | None = Field(description="Set once `FAILURE` (and while `RETRY`).")
    retries: int = Field(ge=0, description="How many times the task has been retried.")
    submitted_at: str = Field(description="When the task was accepted (UTC, ISO 8601, µs).")
    started_at: str | None = Field(description="When a worker first started it.")
    finished_at: str | None = Field(description="When it reached a terminal state.")
    updated_at: str = Field(description="When its latest change happened, stamped by its maker.")
    links: TaskLinks


class TaskPage(BaseModel):
    """Recent tasks, newest first."""

    items: list[TaskSnapshot]
    next: str | None = Field(
        description="Pass as `cursor` for the next page; null when there are no more."
    )


class TaskType(BaseModel):
    """A task clients may submit."""

    name: str
    description: str
    schema_: dict[str, Any] = Field(
        alias="schema", description="JSON Schema of the task's keyword arguments."
    )


class TaskTypes(RootModel[list[TaskType]]):
    """Every submittable task with the JSON Schema of its arguments."""


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether this process can serve: Redis answers and the event subscriber is live."""

    status: Literal["ready", "not ready"]
    redis: bool
    subscriber: bool


class FieldProblem(BaseModel):
    field: str = Field(description="The bad field, as the client wrote it (`x`, `args[2]`).")
    message: str
    type: str = Field(description="A machine-readable kind of mistake.")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document: the one shape every error answer takes."""

    model_config = ConfigDict(extra="allow")
    media_type: ClassVar[str] = PROBLEM_JSON

    type: str = Field(
        description="A relative URI naming the kind of problem, or `about:blank`.",
        examples=["/problems/validation"],
    )
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = Field(None, description="What went wrong with this request.")
    errors: list[FieldProblem] | None = Field(
        None, description="For 422: each bad field and what is wrong with it."
    )


class SubmitBody(BaseModel):
    """A task to run: the name of a registered task and its arguments.

    Positional `args` bind to the task's arguments in the order `GET /task-types` lists them,
    `kwargs` by name; each argument is given once, either way. Arguments are checked strictly: an
    integer takes `464`, not `464.0` (which JSON Schema would count as an integer).
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    task: str = Field(min_length=1, max_length=200)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The envelope is validated here and each task's arguments by its own model (tasks/
        # registry.py); documented as one alternative per task so a reader sees every shape.
        bodies = [_submission(name, REGISTRY[name], handler) for name in sorted(REGISTRY)]
        if not bodies:
            return handler(core_schema)
        # Each alternative fixes `task` to one name, so exactly one of them can match.
        return {"oneOf": bodies, "description": inspect.getdoc(cls)}


def _submission(name: str, task_type: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """The body that submits `task_type`, as bind_arguments (tasks/registry.py) takes it: `args`
    bind to the parameters in order, `kwargs` by name, each parameter at most once, and every
    required one either way. The arguments model alone would say that `kwargs` must hold every
    required parameter, and that `args` takes anything."""
    arguments = handler.resolve_ref_schema(handler(task_type.arguments.__pydantic_core_schema__))
    properties: dict[str, Any] = arguments.get("properties", {})
    required = set(arguments.get("required", []))
    names = list(properties)
    rules = []
    for position, param in enumerate(names):
        # Given by position when `args` reaches it; then not by name as well.
        rule: dict[str, Any] = {
            "if": {"required": ["args"], "properties": {"args": {"minItems": position + 1}}},
            "then": {"properties": {"kwargs": {"not": {"required": [param]}}}},
        }
        if param in required:
            rule["else"] = {"required": ["kwargs"], "properties": {"kwargs": {"required": [param]}}}
        rules.append(rule)
    by_name = {k: v for k, v in arguments.items() if k not in ("required", "title", "description")}
    order = ", ".join(f"`{param}`" for param in names) or "none"
    body: dict[str, Any] = {
        "type": "object",
        "title": f"Submit {name}",
        "description": f"Submit `{name}`: {task_type.description}",
        "properties": {
            "task": {"const": name, "type": "string"},
            "args": {
                "type": "array",
                "description": f"Positional arguments, in this order: {order}.",
                "prefixItems": [properties[param] for param in names],
                "items": False,
            },
            "kwargs": {
                **by_name,
                "type": "object",
                "description": "Keyword arguments: the parameters not given by position.",
            },
        },
        "required": ["task"],
        "additionalProperties": False,
    }
    if rules:
        body["allOf"] = rules
    return body


# Query and header parameters: the routes are decorated with these (quart-schema's
# validate_querystring and validate_headers), so each both validates and documents; a parameter
# that does not fit is answered with the model's `invalid` problem (service/problems.py).


def _event_id(value: Any) -> Any:
    # EventSource sends no Last-Event-ID on a first connection; a blank value means the same.
    # An id is the digits the stream sent: "2.0" or "+2" were never sent as an id.
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if not (value.isascii() and value.isdigit()):
            raise ValueError("not the digits of an event id")
    return value


EventId = Annotated[Annotated[int, Field(ge=0, le=MAX_EVENT_ID)] | None, BeforeValidator(_event_id)]
_BAD_EVENT_ID = f"must be an integer from 0 to {MAX_EVENT_ID}"


class StreamQuery(BaseModel):
    invalid: ClassVar[Invalid] = Invalid(
        400, "Bad event id", f"last_event_id {_BAD_EVENT_ID}.", "bad-event-id"
    )

    last_event_id: EventId = Field(
        None,
        description="Resume after this seq (0 replays all that is retained). For a first "
        "connection, which a browser cannot give headers; the `Last-Event-ID` header wins.",
    )


class GlobalStreamQuery(StreamQuery):
    # The epoch qualifies the id: a bad one is a bad event id.
    invalid: ClassVar[Invalid] = Invalid(
        400,
        "Bad event id",
        f"last_event_id {_BAD_EVENT_ID}, and epoch one a stream announced.",
        "bad-event-id",
    )

    epoch: str | None = Field(
        None,
        max_length=200,
        description="The history epoch the `last_event_id` came from (each stream announces its "
        "own). If it is not the current one, the store lost its history since: the stream replays "
        "the new history from its start.",
    )


class StreamHeaders(BaseModel):
    # quart-schema passes headers by field name; the alias is the header's real name.
    model_config = ConfigDict(populate_by_name=True)
    invalid: ClassVar[Invalid] = Invalid(
        400, "Bad event id", f"Last-Event-ID {_BAD_EVENT_ID}.", "bad-event-id"
    )

    last_event_id: EventId = Field(
        None,
        alias="Last-Event-ID",
        description="The last event id seen: the stream resumes after it. EventSource sends it "
        "when it reconnects. A blank value counts as absent; the header wins over the query.",
    )

    def resume_after(self, query: StreamQuery) -> int | None:
        """Where the stream resumes: a browser cannot set headers on a first connection, so the
        query carries the id then; on reconnection its header wins."""
        return query.last_event_id if self.last_event_id is None else self.last_event_id


class PollHeaders(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    invalid: ClassVar[Invalid] = Invalid(400, "Bad header", "A request header is not valid.")

    if_none_match: str | None = Field(
        None,
        alias="If-None-Match",
        description="The `ETag`s of the snapshots the client holds (comma-separated; `W/` is "
        "ignored): while the task is at one of them, the answer is 304. `*` matches any version.",
    )


def _comma_separated(value: Any) -> Any:
    # `state=A&state=B` and `state=A,B` mean the same; one value arrives as a string.
    values = value if isinstance(value, list) else [value]
    return [part for v in values for part in str(v).split(",") if part]


def _within_list_limit(limit: int) -> int:
    # LIST_LIMIT_MAX is this deployment's setting, so the bound is read as a request is checked.
    most: int = current_app.extensions["taskstream"].settings.list_limit_max
    if limit > most:
        raise PydanticCustomError(
            "less_than_equal", "Input should be less than or equal to {le}", {"le": most}
        )
    return limit


class ListQuery(BaseModel):
    invalid: ClassVar[Invalid] = Invalid(
        422, "Invalid query", "Some query parameters are not valid.", "validation"
    )

    # A parameter that is given names something: `state=` or `worker=` is refused, as `limit=`
    # is, rather than read as absent (a filter that silently filters nothing). The bounds apply
    # to given values only; an absent parameter takes its default.
    state: Annotated[list[State], BeforeValidator(_comma_separated)] = Field(
        default_factory=list,
        min_length=1,
        description="Only tasks in these states (repeat, or separate with commas).",
    )
    task: Annotated[list[str], BeforeValidator(_comma_separated)] = Field(
        default_factory=list,
        min_length=1,
        description="Only tasks of these names (repeat, or separate with commas).",
    )
    limit: Annotated[int, AfterValidator(_within_list_limit)] = Field(
        20, ge=1, description="Page size, 1 to LIST_LIMIT_MAX."
    )
    cursor: str | None = Field(
        None, min_length=1, description="The `next` value of the previous page."
    )
    worker: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Only tasks run by this worker (its hostname).",
    )
    id_prefix: str | None = Field(
        None, min_length=1, max_length=64, description="Only tasks whose id starts with this."
    )
    since: float | None = Field(
        None, ge=0, description="Only tasks submitted at or after this Unix time."
    )
    until: float | None = Field(
        None, ge=0, description="Only tasks submitted at or before this Unix time."
    )


class TaskEvent(BaseModel):
    """One event of a `text/event-stream` answer (WHATWG server-sent events).

    The stream opens with a `retry:` field, then sends one unnamed event per change: `id:` the
    change's sequence number, `data:` the task's snapshot as one line of JSON. While nothing
    changes, `: keepalive` comments go out. In OpenAPI 3.1 a stream's `schema` describes each
    event, read as {id, event, data}.
    """

    media_type: ClassVar[str] = EVENT_STREAM

    id: str = Field(
        pattern=r"^[0-9]+$",
        description="The snapshot's `seq` (per-task stream) or the global sequence number "
        "(`GET /events`); send it back as `Last-Event-ID` to resume.",
    )
    event: Literal["message"] = Field(
        "message", description="Events are unnamed, so EventSource's `onmessage` gets them all."
    )
    data: Json[TaskSnapshot] = Field(description="The task's snapshot after this change.")


class Session(BaseModel):
    """Who the session belongs to (the cookie itself is HttpOnly)."""

    name: str = Field(description="The caller's name; empty when authentication is off.")
    admin: bool = Field(description="Whether the caller sees every task.")


class StreamToken(BaseModel):
    """A short-lived token that opens one task's stream, for an EventSource URL."""

    token: str | None = Field(description="The token; null when authentication is off.")
    events: str = Field(description="The stream's URL, with the token in its query.")
    expires_in: int | None = Field(description="Seconds the token is valid.")


class MetricsText(BaseModel):
    """Counters and gauges in the Prometheus text exposition format (its version in the type)."""

    media_type: ClassVar[str] = PROMETHEUS_TEXT


class HtmlPage(BaseModel):
    """An HTML page."""

    media_type: ClassVar[str] = HTML
