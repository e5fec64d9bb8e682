"""What workers record about themselves and the tasks they end, and how it is read back.

Workers write (taskstream.workers, from Celery's signals); the web reads (the dashboard's
`/workers`, `/queues`, `/stats` and `/metrics`). Everything lives in Redis under the deployment's
prefix, so every web process sees every worker's figures, not only what passed through itself.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from typing import Any

from taskstream.keys import Keys
from taskstream.states import TaskState

# Runtime histogram bucket bounds in seconds (Prometheus `le`), from a quick add to an hour.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0, 1800.0, 3600.0)  # fmt: skip
# The states a task can end an attempt in; RETRY counts each failed attempt that is retried.
OUTCOMES = (TaskState.SUCCESS, TaskState.FAILURE, TaskState.RETRY, TaskState.REVOKED)
# Latest runtimes kept per task name for the percentiles (the last hour's, up to this many).
RECENT_RUNTIMES = 1_000
# Per-minute counts cover the throughput chart's hour, with a margin.
MINUTE_TTL = 2 * 3600
HOUR_MINUTES = 60
_SEP = "|"


def bucket_field(runtime: float) -> str:
    """The histogram field one runtime is counted in: its bucket's upper bound, or `+Inf`."""
    i = bisect.bisect_left(BUCKETS, runtime)
    return repr(BUCKETS[i]) if i < len(BUCKETS) else "+Inf"


def record_end(
    pipe: Any, keys: Keys, task: str, state: str, runtime: float | None, now: float
) -> None:
    """Queue on `pipe` the writes that count one ended attempt of `task`."""
    pipe.hincrby(keys.outcomes, f"{task}{_SEP}{state}", 1)
    minute_key = keys.minute(int(now // 60))
    pipe.hincrby(minute_key, state, 1)
    pipe.expire(minute_key, MINUTE_TTL)
    if runtime is None:
        return
    hist = keys.runtime_histogram(task)
    pipe.hincrby(hist, bucket_field(runtime), 1)
    pipe.hincrby(hist, "count", 1)
    pipe.hincrbyfloat(hist, "sum", runtime)
    recent = keys.recent_runtimes(task)
    pipe.lpush(recent, f"{now:.3f}:{runtime:.6f}")
    pipe.ltrim(recent, 0, RECENT_RUNTIMES - 1)


@dataclass(frozen=True)
class Histogram:
    buckets: list[tuple[str, int]]  # cumulative, ending with +Inf
    count: int
    sum: float


@dataclass(frozen=True)
class Worker:
    hostname: str
    online: bool
    pid: int | None
    pool: int | None
    queues: list[str]
    active: int
    reserved: int
    processed: int
    failed: int
    started_at: float | None
    heartbeat: float | None


@dataclass
class Stats:
    """What the workers recorded, read at once (for one scrape, or one `/stats` answer)."""

    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank percentile: a runtime that was actually seen."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def runtime_summary(name: str, runtimes: list[float]) -> dict[str, Any]:
    """One task name's row of `/stats` runtimes: how many, and their p50 and p95."""
    runtimes = sorted(runtimes)
    return {
        "task": name,
        "count": len(runtimes),
        "p50": percentile(runtimes, 0.5),
        "p95": percentile(runtimes, 0.95),
    }


def _int(raw: Any) -> int:
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        return 0


def _float(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


class Monitor:
    """Reads what the workers recorded, on redis-py's asyncio client (decoded responses)."""

    def __init__(self, client: Any, keys: Keys, offline_after: float):
        self.client = client
        self.keys = keys
        self.offline_after = offline_after

    async def workers(self, now: float | None = None) -> list[Worker]:
        now = time.time() if now is None else now
        names = await self.client.zrange(self.keys.workers, 0, -1)
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.worker(name))
            rows = await pipe.execute()
        workers = []
        for name, row in zip(names, rows, strict=True):
            if not row:
                continue
            beat = _float(row.get("heartbeat"))
            online = (
                beat is not None and now - beat <= self.offline_after and not row.get("stopped_at")
            )
            workers.append(
                Worker(
                    hostname=name,
                    online=online,
                    pid=_int(row["pid"]) if "pid" in row else None,
                    pool=_int(row["pool"]) if "pool" in row else None,
                    queues=[q for q in row.get("queues", "").split(",") if q],
                    active=_int(row.get("active")) if online else 0,
                    reserved=_int(row.get("reserved")) if online else 0,
                    processed=_int(row.get("processed")),
                    failed=_int(row.get("failed")),
                    started_at=_float(row.get("started_at")),
                    heartbeat=beat,
                )
            )
        return workers

    async def stats(self, names: list[str]) -> Stats:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.outcomes)
            for name in names:
                pipe.hgetall(self.keys.runtime_histogram(name))
            raw = await pipe.execute()
        stats = Stats()
        for key, value in raw[0].items():
            task, _, state = key.rpartition(_SEP)
            if task in names:
                stats.outcomes[(task, state)] = _int(value)
        for name, hist in zip(names, raw[1:], strict=True):
            running = 0
            buckets = []
            for bound in [*map(repr, BUCKETS), "+Inf"]:
                running += _int(hist.get(bound))
                buckets.append((bound, running))
            stats.histograms[name] = Histogram(
                buckets, _int(hist.get("count")), _float(hist.get("sum")) or 0.0
            )
        return stats

    async def throughput(self, names: list[str], now: float | None = None) -> dict[str, Any]:
        """Tasks ended per minute by state over the last hour, and runtime p50/p95 per name."""
        now = time.time() if now is None else now
        last = int(now // 60)
        minutes = list(range(last - HOUR_MINUTES + 1, last + 1))
        async with self.client.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(self.keys.minute(minute))
            for name in names:
                pipe.lrange(self.keys.recent_runtimes(name), 0, -1)
            raw = await pipe.execute()
        per_minute = [
            {"minute": m * 60, **{str(s): _int(row.get(s)) for s in OUTCOMES}}
            for m, row in zip(minutes, raw[: len(minutes)], strict=True)
        ]
        runtimes = []
        for name, entries in zip(names, raw[len(minutes) :], strict=True):
            values = []
            for entry in entries:
                at, _, seconds = entry.partition(":")
                at_f, seconds_f = _float(at), _float(seconds)
                if at_f is not None and seconds_f is not None and now - at_f <= 3600:
                    values.append(seconds_f)
            runtimes.append(runtime_summary(name, values))
        return {"per_minute": per_minute, "runtimes": runtimes}
