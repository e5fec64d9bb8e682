"""Structured logs for the web and the worker: one line per record, with the task id as a field.

LOG_FORMAT=text (default) writes `key=value` pairs; LOG_FORMAT=json writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime


def _current_task_id() -> str | None:
    # Inside a worker's pool process, the task being run; elsewhere nothing.
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - celery is a dependency
        return None
    request = getattr(current_task, "request", None) if current_task else None
    return getattr(request, "id", None)


class StructuredFormatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None) or _current_task_id()
        if task_id:
            fields["task_id"] = task_id
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.as_json:
            return _one_line(json.dumps(fields, ensure_ascii=False))
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


# JSON leaves these raw, yet log readers (and str.splitlines) break lines at them: a value could
# forge a record of its own. Escaped, they stay valid JSON inside the string.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


_BARE = re.compile(r"[\w\-.:/\[\]@+]+")


def _quote(value: object) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return _one_line(json.dumps(text, ensure_ascii=False))


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger's records through one structured handler on the root logger.

    `level` and `fmt` come from Settings (LOG_LEVEL, LOG_FORMAT)."""
    handler = logging.StreamHandler()
    handler.setFormatter(StructuredFormatter(fmt.lower() == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Hypercorn logs through its own handlers as well; one line per record is enough.
    for name in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
