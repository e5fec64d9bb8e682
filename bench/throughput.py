"""What one web process sustains: stream opens a second, and submissions a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.stack import Stack, client_process, cpu_seconds, read_report


@dataclass
class Rate:
    completed: int
    failed: int
    seconds: float
    concurrency: int

    # Every run's rate, where this is the median of several.
    runs: tuple[float, ...] = ()
    # CPU seconds each part spent during the run ("web", "load generator", "Redis").
    cpu: dict[str, float] = field(default_factory=dict)

    def cpu_per_item_us(self, part: str) -> float:
        return 1e6 * self.cpu.get(part, 0.0) / max(self.completed, 1)

    def cores(self, part: str) -> float:
        return self.cpu.get(part, 0.0) / self.seconds if self.seconds else 0.0

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


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of a process and of its descendants still running."""
    total = 0.0
    try:
        total = cpu_seconds(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


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
    stack: Stack,
    concurrency: int = 32,
    seconds: float = 5.0,
    port: int | None = None,
    web_pid: int | None = None,
) -> Rate:
    """POST /tasks (add) from many keep-alive clients, the worker paused: the web's rate alone
    (the stack's web, or whatever serves `port`: `web_pid` is its process), and the CPU that the
    web, the load generator and Redis spent meanwhile."""
    stack.pause_worker(True)
    web = web_pid or stack.web.pid
    assert stack.redis.process is not None
    redis_pid = stack.redis.process.pid
    try:
        proc = client_process(
            "submit", host="127.0.0.1", port=port or stack.port, concurrency=concurrency,
            seconds=seconds,
        )  # fmt: skip
        # CPU is counted from the moment the client starts sending.
        read_report(proc, "started", 60)
        before = (tree_cpu(web), tree_cpu(proc.pid), tree_cpu(redis_pid))
        done = read_report(proc, "done", seconds + 60)
        after = (tree_cpu(web), tree_cpu(proc.pid), tree_cpu(redis_pid))
        proc.wait(30)
    finally:
        stack.pause_worker(False)
    cpu = dict(zip(("web", "load generator", "Redis"),
                   (b - a for a, b in zip(before, after, strict=True)), strict=True))  # fmt: skip
    return Rate(done["accepted"], done["other"], done["seconds"], concurrency, cpu=cpu)
