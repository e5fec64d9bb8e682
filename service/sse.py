"""Server-sent events framing (WHATWG HTML, "server-sent events")."""

from __future__ import annotations

KEEPALIVE = b": keepalive\n\n"


def event(event_id: int, data: str) -> bytes:
    # `data` is one line of JSON (service.record.dumps never emits a raw newline), so it cannot
    # start a new field or a new event, whatever a task puts in its output.
    if "\n" in data or "\r" in data:
        raise ValueError("SSE data must be a single line")
    return f"id: {event_id}\ndata: {data}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


def named(name: str, data: str) -> bytes:
    """An event of its own type, with no id: EventSource hands it only to listeners of `name`
    (never to onmessage), and it leaves the id a reconnection resumes from as it was."""
    if "\n" in data or "\r" in data or "\n" in name:
        raise ValueError("SSE fields must be single lines")
    return f"event: {name}\ndata: {data}\n\n".encode()
