"""The baseline for submissions: a plain Quart route that calls `task.apply_async`, and nothing
else (no record, no validation, no thread pool), served as Hypercorn serves any app."""

from __future__ import annotations

from quart import Quart, request

from taskstream.celery_app import load_celery
from taskstream.settings import Settings

app = Quart(__name__)
celery = load_celery(Settings.from_env())


@app.post("/tasks")
async def submit() -> tuple[dict[str, str], int]:
    body = await request.get_json()
    result = celery.tasks[body["task"]].apply_async(kwargs=body.get("kwargs") or {})
    return {"id": result.id}, 202
