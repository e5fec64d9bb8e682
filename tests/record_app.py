"""The worker app of the recording tests (`celery -A tests.record_app worker`): taskstream's own
app, plus plain `@shared_task` tasks with Celery's default base class, as a project writes them.
"""

from __future__ import annotations

import datetime
import decimal
import os
import time
import uuid
from typing import Any

import redis
from celery import shared_task, states
from celery.exceptions import Ignore

from taskstream.celery_app import create_celery

app = create_celery()

if os.environ.get("RECORD_APP_BEAT"):
    # For the beat test: a periodic task, as a project's beat_schedule names one.
    app.conf.beat_schedule = {
        "answer": {"task": "tests.record_app.plain_add", "schedule": 1.0, "args": (20, 22)}
    }


@shared_task
def plain_add(x: float, y: float) -> float:
    return x + y


@shared_task
def total(values: list[float]) -> float:
    return sum(values)


@shared_task(bind=True)
def stages(self: Any, n: int) -> str:
    """Reports progress the way celery-progress and the tutorials do."""
    for i in range(1, n + 1):
        meta = {"current": i, "total": n, "message": f"stage {i}", "unit": "files"}
        self.update_state(state="PROGRESS", meta=meta)
    return "staged"


@shared_task(bind=True)
def custom_state(self: Any, gate: str, state: str = "DOWNLOADING") -> str:
    """Reports a state of its own, then waits until the test has looked (a key named `gate`)."""
    self.update_state(state=state, meta={"file": "a.csv", "done": 3})
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    deadline = time.monotonic() + 30
    while not client.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "downloaded"


@shared_task(bind=True, max_retries=2)
def retry_once(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=ValueError("first attempt fails"), countdown=0.1)
    return "ok"


@shared_task(bind=True)
def hand_over(self: Any, x: float, y: float) -> None:
    """Replaces itself with plain_add (Task.replace): its id ends as the replacement does."""
    raise self.replace(plain_add.si(x, y))


@shared_task
def explode(message: str) -> None:
    raise KeyError(message)


@shared_task
def typed_result() -> dict[str, Any]:
    """What Celery's JSON serializer takes beyond JSON itself."""
    return {
        "when": datetime.datetime(2024, 1, 1, 12, 30, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 1, 2),
        "id": uuid.UUID(int=5),
        "amount": decimal.Decimal("1.50"),
        "nan": float("nan"),
        "raw": b"bytes",
        "pair": (1, 2),
    }


@shared_task
def big_result(size: int, after: float = 1.0) -> str:
    """A result of `size` characters, after a pause that lets a waiting `.get()` subscribe."""
    time.sleep(after)
    return "x" * size


class PaymentError(Exception):
    """An exception of a project's own, with arguments that are not one message."""

    def __init__(self, code: int, detail: dict[str, Any], extra: list[int] | None = None):
        super().__init__(code, detail, extra)
        self.code = code


@shared_task
def refuse_payment() -> None:
    raise PaymentError(402, {"reason": "card declined"}, [1, 2])


@shared_task
def look_up(key: str) -> None:
    raise KeyError(key)


@shared_task(bind=True)
def fail_by_hand(self: Any, message: str) -> None:
    """Celery's documented way to fail a task with a state of one's own choosing."""
    self.update_state(
        state=states.FAILURE, meta={"exc_type": "ValueError", "exc_message": [message]}
    )
    raise Ignore()


@shared_task(bind=True)
def succeed_early(self: Any) -> str:
    """Says SUCCESS with update_state before it has finished (Celery takes any state name there),
    then goes on to return its real result."""
    self.update_state(state=states.SUCCESS, meta={"rows": 10})
    self.update_state(state="PROGRESS", meta={"current": 2, "total": 2})
    return "final"


@shared_task(bind=True)
def succeed_by_hand(self: Any) -> None:
    """Celery's way to end a task with a result of one's own: update_state, then Ignore."""
    self.update_state(state=states.SUCCESS, meta={"rows": 3})
    raise Ignore()


@shared_task
def skip() -> None:
    """Ends by raising Ignore: Celery stores nothing for it."""
    raise Ignore()


@shared_task
def gated(gate: str, value: float) -> float:
    """Returns `value` once the test opens its gate (a key named `gate`), within 30 s."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    deadline = time.monotonic() + 30
    while not client.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value
