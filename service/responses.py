"""How the routes answer with JSON: a declared model (validated by quart-schema's
validate_response, which the OpenAPI document shows), or text already encoded (stored snapshots,
spliced once rather than parsed and re-encoded)."""

from __future__ import annotations

import json
from typing import Any

from quart import Response

# What a route with a declared response model returns: the model, its status and its headers.
Answered = tuple[Any, int, dict[str, str]]

NO_STORE = {"Cache-Control": "no-store"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON (a str is taken as JSON text already), never cached."""
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    response = Response(text, status=status, content_type="application/json")
    response.headers.update(NO_STORE)
    response.headers.update(headers or {})
    return response


def bodiless(status: int, headers: dict[str, str] | None = None) -> Response:
    """A 204 or 304: no content, so no Content-Type or Content-Length to describe any (RFC 9110
    §8.6, §15.3.5, §15.4.5). Quart would give it text/html and a length of 0, as for a page."""
    response = Response(b"", status=status, headers=headers)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    return response
