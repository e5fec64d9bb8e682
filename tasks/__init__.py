"""taskstream: run jobs on Celery workers and follow every change live over Server-Sent Events.

The public API:

- `init_celery(app)` configures your Celery app so every task it sends or runs is recorded.
- `submittable` makes a task submittable over HTTP (`POST /tasks`).
- `report_progress(current, total, message)` records progress from inside a running task.
- `TaskState`, the states a task goes through.
- `create_app()` the web app (Quart), `Client` and `AsyncClient` the HTTP clients.

Every name is imported on first use, so a worker importing `taskstream` loads neither Quart nor
httpx, and the HTTP client (`taskstream.client`) loads no Celery.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from taskstream.states import TaskState

if TYPE_CHECKING:
    from taskstream.celery_app import init_celery
    from taskstream.client import AsyncClient, Client
    from taskstream.progress import report_progress
    from taskstream.registry import submittable
    from taskstream.web.app import create_app

# name -> the module that defines it
_LAZY = {
    "init_celery": "taskstream.celery_app",
    "submittable": "taskstream.registry",
    "report_progress": "taskstream.progress",
    "create_app": "taskstream.web.app",
    "Client": "taskstream.client",
    "AsyncClient": "taskstream.client",
}

__all__ = [
    "AsyncClient",
    "Client",
    "TaskState",
    "create_app",
    "init_celery",
    "report_progress",
    "submittable",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskstream' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
