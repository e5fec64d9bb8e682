"""The demonstration tasks the contract names: add, sleep, fail, flaky.

Imported (by the web and, through Celery's `imports`, the worker) unless DEMO_TASKS=false.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskstream.progress import report_progress
from taskstream.registry import number, submittable


class _Arguments(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# The argument types are built by `number()` (a validator and its schema), which a type checker
# cannot evaluate; pydantic reads them at run time.
class AddArguments(_Arguments):
    x: number() = Field(description="The first addend.")  # type: ignore[valid-type]
    y: number() = Field(description="The second addend.")  # type: ignore[valid-type]


class SleepArguments(_Arguments):
    seconds: number(ge=0, le=3600) = Field(  # type: ignore[valid-type]
        description="How long to sleep in all."
    )
    steps: int = Field(10, ge=1, le=1000, description="How many equal parts, each reported.")


class FailArguments(_Arguments):
    message: str = Field(max_length=2000, description="The error message the task fails with.")


class FlakyArguments(_Arguments):
    failures: int = Field(ge=0, le=20, description="How many attempts fail before one succeeds.")


class FlakyError(Exception):
    """The failure flaky raises on purpose before it succeeds."""


@submittable(AddArguments, "Returns x + y.", name="add", bind=True)
def add(self: Any, x: float, y: float) -> float:
    return x + y


@submittable(
    SleepArguments,
    "Sleeps in `steps` equal parts, reporting progress after each.",
    name="sleep",
    bind=True,
)
def sleep(self: Any, seconds: float, steps: int = 10) -> dict[str, float]:
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        report_progress(step, steps, f"step {step} of {steps}")
    return {"slept": seconds}


@submittable(FailArguments, "Raises RuntimeError with the given message.", name="fail", bind=True)
def fail(self: Any, message: str) -> None:
    raise RuntimeError(message)


@submittable(
    FlakyArguments,
    "Fails and is retried `failures` times, then returns 'ok'.",
    name="flaky",
    bind=True,
)
def flaky(self: Any, failures: int) -> str:
    if self.request.retries < failures:
        attempt = self.request.retries + 1
        raise self.retry(
            exc=FlakyError(f"attempt {attempt} of {failures + 1} failed on purpose"),
            countdown=0.2,
            max_retries=failures,
        )
    return "ok"
