"""What one web process sustains: stream opens a second, and submissions a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.stack import Stack, client_process, read_report


@dataclass
class Rate:
    completed: int
    failed: int
    seconds: float
    concurrency: int

    # Every run's rate, where this is the median of several.
    runs: tuple[float, ...] = ()

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def with_runs(self) -> str:
        each = ", ".join(f"{r:,.0f}" for r in self.runs)
        return f"{self.per_second:,.0f}/s" + (f" (median of {each})" if self.runs else "")


def median_rate(measure: Callable[[], Rate], runs: int = 3) -> Rate:
    """The median of `runs` measurements: one run of a few seconds on a machine whose cores the
    load generator shares varies by a fifth from the next."""
    rates = sorted((measure() for _ in range(runs)), key=lambda r: r.per_second)
    middle = rates[len(rates) // 2]
    return replace(middle, runs=tuple(r.per_second for r in rates))


def stream_opens(stack: Stack, concurrency: int = 50, seconds: float = 5.0) -> Rate:
    """Open a stream on a running task, receive its first event, close; many clients at once."""
    task = stack.submit("sleep", seconds=600, steps=10)
    stack.wait_state(task["id"], {"STARTED", "PROGRESS"}, 30)
    proc = client_process(
        "opens",
        host="127.0.0.1",
        port=stack.port,
        path=f"/tasks/{task['id']}/events",
        concurrency=concurrency,
        seconds=seconds,
    )
    done = read_report(proc, "done", seconds + 60)
    proc.wait(30)
    stack.cancel(task["id"])
    return Rate(done["completed"], done["failed"], done["seconds"], concurrency)


def submissions(
    stack: Stack, concurrency: int = 32, seconds: float = 5.0, port: int | None = None
) -> Rate:
    """POST /tasks (add) from many keep-alive clients, the worker paused: the web's rate alone
    (the stack's web, or whatever serves `port`)."""
    stack.pause_worker(True)
    try:
        proc = client_process(
            "submit", host="127.0.0.1", port=port or stack.port, concurrency=concurrency,
            seconds=seconds,
        )  # fmt: skip
        done = read_report(proc, "done", seconds + 60)
        proc.wait(30)
    finally:
        stack.pause_worker(False)
    return Rate(done["accepted"], done["other"], done["seconds"], concurrency)
