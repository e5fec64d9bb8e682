"""RFC 9457 problem details: the one shape every error answer takes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Quart, Response, current_app, has_request_context, request
from quart_schema import RequestSchemaValidationError
from quart_schema.validation import (
    QUART_SCHEMA_HEADERS_ATTRIBUTE,
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    RequestHeadersValidationError,
)
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from taskstream.web.media import PROBLEM_JSON

log = logging.getLogger(__name__)


# A body of hostile input (a 60 KB list of bad values) must not make an answer fifty times its
# size: the first errors are enough to fix the request, each cut to a readable length.
MAX_ERRORS = 20
MAX_ERROR_TEXT = 200


def _capped(errors: list[Any]) -> dict[str, Any]:
    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_ERROR_TEXT:
            return value[: MAX_ERROR_TEXT - 1] + "…"
        return value

    kept = [
        {k: cut(v) for k, v in e.items()} if isinstance(e, dict) else cut(e)
        for e in errors[:MAX_ERRORS]
    ]
    capped: dict[str, Any] = {"errors": kept}
    if len(errors) > MAX_ERRORS:
        capped["errors_omitted"] = len(errors) - MAX_ERRORS
    return capped


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}
        if isinstance(extensions.get("errors"), list):
            extensions.update(_capped(extensions["errors"]))
        self.extensions = extensions

    @property
    def type(self) -> str:
        """A URI naming the kind of problem (the README lists them all), under the root path the
        API is served at, so that it resolves to the same place from any page of it."""
        if not self.kind:
            return "about:blank"
        root = request.root_path if has_request_context() else ""
        return f"{root}/problems/{self.kind}"

    def response(self) -> Response:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extensions)
        response = Response(json.dumps(body), status=self.status, content_type=PROBLEM_JSON)
        # About this request, not a resource: a cache must not answer the next one with it.
        response.headers["Cache-Control"] = "no-store"
        response.headers.update(self.headers)
        return response


@dataclass(frozen=True)
class Invalid:
    """How a parameter model's refusal is answered: declared on the model (service/models.py)."""

    status: int
    title: str
    detail: str
    kind: str = "validation"


def field_errors(exc: ValidationError, whole_path: bool = True) -> list[dict[str, str]]:
    """The `errors` of a problem: each bad field as the client wrote it, what is wrong with it.

    A body names its nested fields (`kwargs.x`); a query or header parameter is named alone
    (`state`, not `state.0`), by its alias when it has one (`Last-Event-ID`).
    """
    errors = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        field = ".".join(loc) if whole_path else (loc[0] if loc else "")
        errors.append({"field": field or "body", "message": error["msg"], "type": error["type"]})
    return errors


def _parameter_problem(exc: RequestSchemaValidationError) -> Problem:
    view = current_app.view_functions.get(request.endpoint or "")
    attribute = (
        QUART_SCHEMA_HEADERS_ATTRIBUTE
        if isinstance(exc, RequestHeadersValidationError)
        else QUART_SCHEMA_QUERYSTRING_ATTRIBUTE
    )
    model: type[BaseModel] | None = getattr(view, attribute, None)
    invalid: Invalid = getattr(model, "invalid", Invalid(400, "Bad Request", "Invalid request."))
    cause = exc.validation_error
    if isinstance(cause, ValidationError):
        errors = field_errors(cause, whole_path=False)
        if model is not None:
            aliases = {name: f.alias for name, f in model.model_fields.items() if f.alias}
            for error in errors:
                error["field"] = aliases.get(error["field"], error["field"])
    else:
        errors = [{"field": "", "message": str(cause)[:300], "type": "invalid"}]
    return Problem(invalid.status, invalid.title, invalid.detail, kind=invalid.kind, errors=errors)


def register(app: Quart) -> None:
    @app.errorhandler(RequestSchemaValidationError)
    async def _invalid_parameters(exc: RequestSchemaValidationError) -> Response:
        return _parameter_problem(exc).response()

    @app.errorhandler(Problem)
    async def _problem(exc: Problem) -> Response:
        return exc.response()

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return Problem(exc.code or 500, exc.name, exc.description, headers=headers).response()

    @app.errorhandler(RedisError)
    async def _store_down(exc: RedisError) -> Response:
        # Say what kind of failure, never the message: it can carry the Redis address.
        log.error("Redis unavailable: %s", type(exc).__name__)
        return Problem(
            503,
            "Service Unavailable",
            "The task store is not reachable; try again shortly.",
            kind="store-unavailable",
            headers={"Retry-After": "2"},
        ).response()

    @app.errorhandler(Exception)
    async def _fault(exc: Exception) -> Response:
        # The operator gets the traceback in the log; the client gets none of it.
        log.exception("unhandled error")
        return Problem(
            500, "Internal Server Error", "The server could not complete the request."
        ).response()
