"""The OpenAPI document (`GET /openapi.json`) and its docs page (`GET /docs`).

quart-schema walks the app's URL map and turns the models of service/models.py into parameters,
request bodies and components. The query and header models validate too (the routes are
decorated with them); POST /tasks validates its body with the same model it documents here, by
itself, so that malformed JSON and a wrong media type keep their own problem documents. What
quart-schema cannot say by itself (problem+json and event-stream media types, response headers,
one description per status) comes from the table below, keyed by endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from pydantic import BaseModel
from quart import Quart, Response, current_app, has_request_context, request
from quart_schema import QuartSchema, document_request
from quart_schema.openapi import OpenAPIProvider
from quart_schema.validation import QUART_SCHEMA_RESPONSE_ATTRIBUTE
from werkzeug.routing.rules import Rule

from taskstream.web import media
from taskstream.web import models as m
from taskstream.web import ops_models as om
from taskstream.web.responses import json_response

_REF = "#/components/schemas/{model}"
_TEXT = {"schema": {"type": "string"}}


class _Declared:
    """Marker: the route declares this answer's model itself (quart-schema's validate_response),
    which both validates what it returns and is what this document shows."""

    def __repr__(self) -> str:
        return "DECLARED"


DECLARED: Final = _Declared()


@dataclass(frozen=True)
class Answer:
    """One documented response: its model (None for no body; DECLARED for the model the route
    validates its answer with) and what it means here."""

    model: type[BaseModel] | _Declared | None
    description: str
    headers: dict[str, str] = field(default_factory=dict)


def _problem(description: str, **headers: str) -> Answer:
    return Answer(m.ProblemDetails, description, headers)


_NOT_FOUND = _problem("No task with this id was accepted here, or it has expired.")
_BAD_EVENT_ID = _problem("`Last-Event-ID` or `last_event_id` is not an integer from 0 to 2⁶³-1.")
_ETAG = {"ETag": "The snapshot's version (its `seq`, quoted); send it back as `If-None-Match`."}


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: dict[int, Answer]
    description: str = ""
    tags: tuple[str, ...] = ()
    request: type[BaseModel] | None = None


OPERATIONS: dict[str, Operation] = {
    "tasks.submit": Operation(
        "Submit a task",
        {
            202: Answer(
                m.TaskSnapshot,
                "Accepted and queued: the snapshot, state `PENDING`, `seq` 1.",
                {"Location": "The new task's URL, `/tasks/{id}`."},
            ),
            400: _problem("The body is not valid JSON."),
            404: _problem("No submittable task has this name; `available` lists those that do."),
            413: _problem("The body is larger than MAX_BODY_BYTES."),
            415: _problem("The body is not `application/json`."),
            422: _problem("The body or the task's arguments do not fit; `errors` names each."),
            503: _problem(
                "The task queue is not reachable; the task is recorded as failed.",
                **{"Retry-After": "Seconds to wait before trying again."},
            ),
        },
        tags=("tasks",),
        request=m.SubmitBody,
    ),
    "tasks.list_tasks": Operation(
        "List recent tasks, newest first",
        {
            200: Answer(m.TaskPage, "A page of snapshots and the cursor of the next."),
            400: _problem("The cursor is not one this service gave out."),
            422: _problem("A query parameter is not valid; `errors` names each."),
        },
        tags=("tasks",),
    ),
    "tasks.status": Operation(
        "Get a task's snapshot",
        {
            200: Answer(m.TaskSnapshot, "The task as it stands.", _ETAG),
            304: Answer(None, "Unchanged since the `If-None-Match` version.", _ETAG),
            404: _NOT_FOUND,
        },
        tags=("tasks",),
    ),
    "tasks.cancel": Operation(
        "Cancel a task",
        {
            202: Answer(m.TaskSnapshot, "Cancelled: the snapshot, state `REVOKED`."),
            404: _NOT_FOUND,
            409: _problem("The task had already finished; `state` says how."),
        },
        description="A task that had not started never starts; a running one is stopped.",
        tags=("tasks",),
    ),
    "tasks.task_events": Operation(
        "Follow one task's changes",
        {
            200: Answer(
                m.TaskEvent,
                "The stream; it ends after the terminal snapshot. `: keepalive` while idle.",
            ),
            204: Answer(None, "The client has already seen the terminal snapshot: stop."),
            400: _BAD_EVENT_ID,
            404: _NOT_FOUND,
        },
        description="The first event is the current snapshot (or, when resuming, every retained "
        "change after the given id), then every later change in `seq` order, none skipped, none "
        "repeated.",
        tags=("streams",),
    ),
    "tasks.all_events": Operation(
        "Follow every task's changes",
        {
            200: Answer(m.TaskEvent, "The stream; it never ends by itself."),
            400: _BAD_EVENT_ID,
        },
        description="One stream for dashboards; the event id is a global sequence number. "
        "It does not end by itself.",
        tags=("streams",),
    ),
    "tasks.task_types": Operation(
        "List the tasks that may be submitted",
        {200: Answer(DECLARED, "Each task's name, description and argument schema.")},
        tags=("tasks",),
    ),
    "tasks.healthz": Operation(
        "Liveness", {200: Answer(DECLARED, "The process answers.")}, tags=("operations",)
    ),
    "tasks.readyz": Operation(
        "Readiness",
        {
            200: Answer(DECLARED, "Redis answers and the event subscriber is live."),
            503: Answer(DECLARED, "Not ready; the body says which part is missing."),
        },
        tags=("operations",),
    ),
    "tasks.create_session": Operation(
        "Start a browser session",
        {200: Answer(DECLARED, "A signed, expiring, HttpOnly session cookie is set.")},
        description="Trades the bearer token of this request for a cookie, so that a browser's "
        "EventSource (which cannot send headers) is authenticated.",
        tags=("security",),
    ),
    "tasks.end_session": Operation(
        "End the browser session",
        {204: Answer(None, "The cookie is cleared.")},
        tags=("security",),
    ),
    "tasks.stream_token": Operation(
        "A token for one task's stream",
        {
            200: Answer(DECLARED, "The token and the stream URL that carries it."),
            404: _NOT_FOUND,
        },
        tags=("security",),
    ),
    "tasks.metrics": Operation(
        "This process's metrics",
        {
            200: Answer(m.MetricsText, "Open streams, changes, drops, reconnects, requests."),
            403: _problem(
                "Authentication is on and the caller is neither an admin nor the metrics token."
            ),
        },
        description="With authentication on, for admins and for `METRICS_TOKEN` (a bearer token "
        "for scrapers, which opens nothing else); with it off, open unless `METRICS_TOKEN` is set.",
        tags=("operations",),
    ),
    "tasks.dashboard": Operation(
        "The dashboard page",
        {200: Answer(m.HtmlPage, "The page."), 404: _problem("The page is not installed.")},
        tags=("pages",),
    ),
    "openapi": Operation(
        "This OpenAPI document",
        {200: Answer(None, "The document.")},
        tags=("pages",),
    ),
    "docs": Operation(
        "A readable page of this document", {200: Answer(m.HtmlPage, "The page.")}, tags=("pages",)
    ),
    "static": Operation(
        "The pages' static files",
        {200: Answer(None, "The file."), 404: _problem("No such file.")},
        tags=("pages",),
    ),
}

# The operations API behind the dashboard (service/ops_routes.py).
OPERATIONS.update(
    {
        "ops.workers": Operation(
            "List the workers",
            {200: Answer(DECLARED, "Every worker that reported itself, online or not.")},
            description="Read from what each worker records in Redis (a heartbeat every 2 s); "
            "a worker is offline once its heartbeat is older than WORKER_OFFLINE_SECONDS.",
            tags=("operations",),
        ),
        "ops.queues": Operation(
            "List the queues the workers consume",
            {200: Answer(DECLARED, "Depth and reserved tasks of each queue.")},
            tags=("operations",),
        ),
        "ops.stats": Operation(
            "Counts per state and throughput",
            {200: Answer(DECLARED, "Counts, tasks per minute by outcome, runtime p50/p95.")},
            tags=("operations",),
        ),
        "ops.task_detail": Operation(
            "Get a task's detail and timeline",
            {
                200: Answer(om.TaskDetail, "The snapshot, arguments, links and every change."),
                404: _NOT_FOUND,
            },
            tags=("tasks",),
        ),
        "ops.rerun": Operation(
            "Re-run a task",
            {
                202: Answer(
                    m.TaskSnapshot,
                    "A new task with the same arguments, linked by `rerun_of` to the original.",
                    {"Location": "The new task's URL."},
                ),
                404: _NOT_FOUND,
                409: _problem("Not re-runnable: arguments not kept in full, or task unknown."),
            },
            tags=("tasks",),
        ),
    }
)

# Answers that routes share, each documented where it can be given, so that a client knows
# their shape and does not prepare for answers that never come (see _common).
_UNAUTHORIZED = _problem(
    "Authentication is on and the request has no valid token, session or stream token.",
    **{
        "WWW-Authenticate": '`Bearer realm="taskstream"`, with `, error="invalid_token"` when '
        "the request brought a bearer token, stream token or session cookie that is not (or no "
        "longer) valid."
    },
)
_CROSS_SITE = _problem("A cross-site request from an origin not in CORS_ORIGINS.")
_OVER_LIMIT = _problem(
    "Over a limit: submissions per caller per window, or open streams per caller.",
    **{"Retry-After": "Seconds to wait before trying again."},
)
_FAULT = _problem("A fault on the server; the body never holds a traceback.")
_STORE_DOWN = _problem(
    "Redis (the task store) is not reachable; try again shortly.",
    **{"Retry-After": "Seconds to wait before trying again."},
)
# Submissions are limited per caller (or address) always; streams per caller, with callers.
_SUBMISSIONS = {"tasks.submit", "ops.rerun"}
_STREAMS = {"tasks.task_events", "tasks.all_events"}
# What reads nothing from Redis, even to check a session: a store that is down does not show.
_STORELESS = {"tasks.healthz", "tasks.dashboard", "docs", "static"}


# How a caller proves who it is when authentication is on (API_TOKENS); with it off, nothing
# is asked but METRICS_TOKEN, if set, by /metrics. See docs/security.md.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "A token of API_TOKENS, for scripts and the CLI."},
    "session": {"type": "apiKey", "in": "cookie", "name": "taskstream_session",
                "description": "The browser session `POST /session` sets (HttpOnly)."},
    "streamToken": {"type": "apiKey", "in": "query", "name": "token",
                    "description": "A five-minute token for one task's stream "
                    "(`POST /tasks/{id}/stream-token`)."},
    "metricsToken": {"type": "http", "scheme": "bearer",
                     "description": "METRICS_TOKEN, for scrapers: `GET /metrics` only."},
}  # fmt: skip
_OPEN = {"tasks.healthz", "tasks.readyz", "tasks.dashboard", "docs", "static"}


def _security(endpoint: str, auth: bool, metrics_token: bool) -> list[dict[str, list[str]]]:
    """What this deployment asks of a caller of `endpoint` (authentication and METRICS_TOKEN
    are its settings): an empty list where it asks nothing."""
    if endpoint in _OPEN:
        return []
    if endpoint == "tasks.metrics":
        schemes = ["bearer", "session"] if auth else []
        schemes += ["metricsToken"] if metrics_token else []
        return [{name: []} for name in schemes]
    if not auth:
        return []
    if endpoint == "tasks.task_events":
        return [{"bearer": []}, {"session": []}, {"streamToken": []}]
    return [{"bearer": []}, {"session": []}]


def _common(endpoint: str, method: str, secured: bool, auth: bool) -> dict[int, Answer]:
    """The shared answers `method` on `endpoint` can give in this deployment."""
    common = {500: _FAULT}
    if secured:
        common[401] = _UNAUTHORIZED
    if method in ("post", "put", "patch", "delete"):
        common[403] = _CROSS_SITE
    if endpoint in _SUBMISSIONS or (auth and endpoint in _STREAMS):
        common[429] = _OVER_LIMIT
    if endpoint not in _STORELESS:
        common[503] = _STORE_DOWN
    return common


class _Provider(OpenAPIProvider):
    def generate_rules(self) -> Any:
        # quart-schema hides its own and the static routes; this document lists every route.
        return [rule for rule in self._app.url_map.iter_rules() if not rule.websocket]

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        document["openapi"] = "3.1.0"
        if has_request_context():
            # The paths below are relative to where this request found the API (a mount prefix
            # or a proxy's root path), so a client generated from the document calls the same.
            document["servers"] = [{"url": request.root_path or "/"}]
        document["info"]["description"] = (
            "Run jobs on Celery workers and follow every change live over Server-Sent Events. "
            "Errors are RFC 9457 problem documents (`application/problem+json`)."
        )
        # Only the schemes some operation here asks for: with authentication off, none (or the
        # scraper's token), so that a client generated from the document asks for no token.
        used = {
            name
            for item in document["paths"].values()
            for op in item.values()
            for requirement in op.get("security", [])
            for name in requirement
        }
        schemes = {k: v for k, v in SECURITY_SCHEMES.items() if k in used}
        if schemes:
            document["components"]["securitySchemes"] = schemes
        components = document["components"]["schemas"]
        for name, model in (("TaskSnapshot", m.TaskSnapshot), ("ProblemDetails", m.ProblemDetails)):
            components.setdefault(name, self._component(model, components))
        return _drop_null_defaults(document)

    def build_headers_parameters(self, model: Any) -> tuple[list, dict]:
        # quart-schema would kebab-case field names; the aliases are the real header names.
        schema = model.model_json_schema(by_alias=True, ref_template=_REF)
        parameters = []
        for name, prop in schema["properties"].items():
            description = prop.pop("description", None)
            param = {"name": name, "in": "header", "schema": prop}
            if description:
                param["description"] = description
            parameters.append(param)
        return parameters, schema.get("$defs", {})

    def build_querystring_parameters(self, model: Any) -> tuple[list, dict]:
        parameters, definitions = super().build_querystring_parameters(model)
        settings = self._app.extensions["taskstream"].settings
        for param in parameters:
            if param["schema"].get("type") == "array":
                param["style"], param["explode"] = "form", True
            if param["name"] == "limit":
                # Configurable (LIST_LIMIT_MAX), so the document states this deployment's bound.
                param["schema"]["maximum"] = settings.list_limit_max
        return parameters, definitions

    def build_request_body(self, model: Any, source: Any) -> tuple[dict, dict]:
        body, definitions = super().build_request_body(model, source)
        body["required"] = True
        return body, definitions

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        operation = OPERATIONS.get(rule.endpoint)
        settings = self._app.extensions["taskstream"].settings
        auth, metrics_token = settings.auth_enabled, bool(settings.metrics_token)
        for item in paths.values():
            for method, op in item.items():
                op = item[method] = dict(op)
                op.setdefault("operationId", f"{method}_{rule.endpoint.replace('.', '_')}")
                op["security"] = _security(rule.endpoint, auth, metrics_token)
                if operation is None:
                    op["responses"] = {"default": {"description": "Not described yet."}}
                    continue
                op["summary"] = operation.summary
                if operation.description:
                    op["description"] = operation.description
                if operation.tags:
                    op["tags"] = list(operation.tags)
                declared = self._declared(rule.endpoint, operation)
                op["responses"] = {
                    str(status): self._response(
                        replace(answer, model=declared[status])
                        if answer.model is DECLARED
                        else answer,
                        components,
                    )
                    for status, answer in {
                        **_common(rule.endpoint, method, bool(op["security"]), auth),
                        **operation.answers,
                    }.items()
                }
        return paths, components

    def _declared(self, endpoint: str, operation: Operation) -> dict[int, type[BaseModel]]:
        """The response models the route validates with; each must be what the table says is
        declared there, and the other way round, so the two cannot drift apart."""
        view = self._app.view_functions.get(endpoint)
        declared = {
            status: model
            for status, (model, _) in getattr(view, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {}).items()
        }
        marked = {status for status, a in operation.answers.items() if a.model is DECLARED}
        if marked != set(declared):
            raise RuntimeError(
                f"{endpoint}: validate_response covers {sorted(declared)}, "
                f"the table marks {sorted(marked)} as declared"
            )
        return declared

    def _component(self, model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        components.update(schema.pop("$defs", {}))
        return schema

    def _ref(self, model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
        name = model.__name__
        if name not in components:
            components[name] = self._component(model, components)
        return {"$ref": _REF.format(model=name)}

    def _response(self, answer: Answer, components: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = {"description": answer.description}
        if answer.headers:
            response["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in answer.headers.items()
            }
        model = answer.model
        if model is None:
            return response
        assert not isinstance(model, _Declared)
        media_type = getattr(model, "media_type", media.JSON)
        if media_type == media.EVENT_STREAM:
            # Validation mode: it writes `data` as a JSON text (contentSchema), as it is sent.
            schema = model.model_json_schema(ref_template=_REF, mode="validation")
            components.update(schema.pop("$defs", {}))
            components.setdefault(model.__name__, schema)
            content = {"schema": {"$ref": _REF.format(model=model.__name__)}}
        elif media_type in (media.HTML, media.PROMETHEUS_TEXT):
            content = _TEXT
        else:
            content = {"schema": self._ref(model, components)}
        response["content"] = {media_type: content}
        return response


def _drop_null_defaults(node: Any) -> Any:
    # Optional query fields default to "absent", which pydantic writes as `default: null`.
    if isinstance(node, dict):
        return {
            k: _drop_null_defaults(v) for k, v in node.items() if not (k == "default" and v is None)
        }
    if isinstance(node, list):
        return [_drop_null_defaults(v) for v in node]
    return node


async def _document() -> Response:
    # As every JSON answer: not to be stored, since it follows the deployment (its task types)
    # and the request (the root path in `servers`), and with authentication on it is a caller's.
    return json_response(current_app.extensions["QUART_SCHEMA"].openapi_provider.schema())


async def _docs_page() -> Response:
    return await current_app.send_static_file("docs.html")


def install(app: Quart) -> None:
    """Serve the document and the docs page; call after every blueprint is registered."""
    for endpoint, operation in OPERATIONS.items():
        view = app.view_functions.get(endpoint)
        if view is None:
            continue
        if operation.request is not None:
            document_request(operation.request)(view)
    app.add_url_rule("/docs", "docs", _docs_page)
    QuartSchema(
        app,
        info={"title": "taskstream", "version": "0.1.0"},
        # Declared answers are written with their fields' public names (TaskType's `schema`).
        pydantic_dump_options={"by_alias": True},
        tags=[
            {"name": "tasks", "description": "Submit, poll, list and cancel tasks."},
            {"name": "streams", "description": "Server-sent events: every change, live."},
            {"name": "operations", "description": "Liveness and readiness probes."},
            {"name": "pages", "description": "Pages for people and this document."},
        ],
        openapi_path="/openapi.json",
        # quart-schema's own pages load their scripts from CDNs; /docs is served from here.
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=_Provider,
    )
    app.view_functions["openapi"] = _document
