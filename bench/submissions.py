"""Submissions a second: the service's web process against a plain Quart route that calls
`task.apply_async`, the service with two web processes on one port, and a py-spy profile of
where one web process spends its time while accepting them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.stack import Stack
from bench.throughput import Rate, median_rate, submissions
from tests.harness import ROOT, Proc, free_port, wait_ready, web_command

# What a sampled stack is spent on: the first of these that any of its frames names. On a Redis
# broker Celery makes the message and kombu its envelope on the event loop, and the record's
# script pushes it (tasks/fast_publish.py) over the connection submissions share
# (tasks/pipelined.py); on another broker kombu publishes on the thread pool.
_CATEGORIES = [
    ("Celery/kombu (the message and its envelope)", ("kombu/", "celery/")),
    ("the record and the push (one Lua script call on the pipelined connection)",
     ("record.py", "fast_publish.py", "pipelined.py", "redis/")),
    ("logging", ("logging/", "logs.py")),
    ("validation and JSON (pydantic, json)", ("pydantic", "json/", "models.py", "registry.py")),
    ("HTTP (Hypercorn, Quart, h11)", ("hypercorn/", "quart/", "h11/", "werkzeug/")),
    ("waiting (idle threads, the event loop polling)", ("asyncio/", "threading.py",
                                                         "concurrent/", "selectors.py")),
]  # fmt: skip


@dataclass
class SubmitResult:
    ours: Rate
    plain: Rate
    two: Rate
    profile: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours.per_second / max(self.plain.per_second, 1e-9)

    @property
    def scaling(self) -> float:
        return self.two.per_second / max(self.ours.per_second, 1e-9)


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration",
         str(int(seconds)), "--rate", "200", "--format", "raw", "--threads",
         "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarize(raw: Path) -> list[tuple[str, float]]:
    """Share of the samples (threads at work: py-spy leaves out idle ones) per category; a stack
    counts under the first category (in the order above) that any of its frames names."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        name = next(
            (c for c, marks in _CATEGORIES if any(m in stack for m in marks)), "other Python code"
        )
        counts[name] += int(n)
    return [(name, 100 * n / total) for name, n in counts.most_common()] if total else []


def measure(stack: Stack, seconds: float = 5.0) -> SubmitResult:
    ours = median_rate(lambda: submissions(stack, seconds=seconds))
    assert stack.service is not None
    env = stack.service.env

    # The same run again under py-spy (its sampling costs the web a little: not the figure).
    raw = stack.logdir / "submissions.pyspy"
    spy = _profile(stack.web.pid, seconds, raw)
    time.sleep(0.5)
    submissions(stack, seconds=seconds)
    spy.wait(30)
    profile = summarize(raw) if raw.exists() else []

    port = free_port()
    plain = Proc("plain", [sys.executable, "-m", "hypercorn", "bench.plain_app:app", "--bind",
                           f"127.0.0.1:{port}", "--worker-class", "uvloop"],
                 env, stack.logdir, cwd=ROOT).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/tasks", json={"task": "add"}, timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the plain app did not start:\n{plain.tail()}") from None
                time.sleep(0.2)
        plain_rate = median_rate(
            lambda: submissions(stack, seconds=seconds, port=port, web_pid=plain.pid)
        )
    finally:
        plain.stop()

    port = free_port()
    pair = Proc("web-pair", web_command("127.0.0.1", port), dict(env, WEB_CONCURRENCY="2"),
                stack.logdir, cwd=ROOT).start()  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", pair, 60)
        time.sleep(2)  # the second process of the pair starts a moment later
        two = median_rate(lambda: submissions(stack, seconds=seconds, port=port, web_pid=pair.pid))
    finally:
        pair.stop()
    return SubmitResult(ours, plain_rate, two, profile)
