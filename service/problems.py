"""RFC 9457 problem details: the one shape every error answer takes."""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Quart, Response
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from taskstream.web.media import PROBLEM_JSON

log = logging.getLogger(__name__)


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
        # A relative URI naming the kind of problem; the README lists them all.
        self.type = f"/problems/{kind}" if kind else "about:blank"
        self.headers = headers or {}
        self.extensions = extensions

    def response(self) -> Response:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extensions)
        response = Response(json.dumps(body), status=self.status, content_type=PROBLEM_JSON)
        response.headers.update(self.headers)
        return response


def register(app: Quart) -> None:
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
