"""The one vocabulary of task states: Celery's own names, in the order a task goes through them."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[str] = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})


def lua_terminal_check(variable: str) -> str:
    """A Lua condition, true when `variable` (a JSON-encoded state as stored) is terminal."""
    return " or ".join(f"{variable} == '\"{state}\"'" for state in sorted(TERMINAL))
