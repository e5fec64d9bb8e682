"""Many open streams on one task: the web's memory per stream, its Redis connections, and how
far apart in time all of them receive the same change."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.stack import Stack, hold_clients, merge_receipts, read_report


@dataclass
class StreamsResult:
    streams: int
    opened: int
    open_seconds: float
    rss_before_kb: int
    rss_after_kb: int
    redis_before: int
    redis_after: int
    redis_total_after: int
    spreads_ms: list[float]  # by the kernel's arrival stamps on the clients' sockets
    terminal_spread_ms: float | None
    read_spreads_ms: list[float]  # by the times the client processes read them
    terminal_read_spread_ms: float | None
    incomplete_events: int
    errors: int

    @property
    def kb_per_stream(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / max(self.opened, 1)


def measure(
    stack: Stack, n: int = 5_000, clients: int = 2, step: float = 1.0, live_events: int = 6
) -> StreamsResult:
    # A task that waits in the queue (the worker paused) while the streams open, then reports
    # progress every `step` seconds and ends by itself, which ends every stream. (Ended by a
    # cancel, it would have the worker kill its child, and the pool's fork of a new one on the
    # same two cores would be inside the last change's spread.)
    stack.pause_worker(True)
    task = stack.submit("sleep", seconds=step * live_events, steps=live_events)
    task_id = task["id"]
    time.sleep(0.5)
    rss_before = stack.rss_kb()
    redis_before, _ = stack.redis_connections()

    path = f"/tasks/{task_id}/events"
    started = time.monotonic()
    procs = hold_clients(stack.port, path, n, clients, seconds=180)
    readies = [read_report(p, "ready", 180) for p in procs]
    open_seconds = time.monotonic() - started
    opened = sum(r["opened"] for r in readies)

    time.sleep(1.0)  # let the last opens settle before reading memory
    rss_after = stack.rss_kb()
    redis_after, redis_total = stack.redis_connections()
    # Reading /proc for 10,000 sockets takes this process (and the kernel) a while: every change
    # of the task comes after that, so that it does not compete with the fan-out.
    measured_at = time.monotonic()
    stack.pause_worker(False)
    stack.wait_done(task_id, step * live_events + 60)
    dones = [read_report(p, "done", 120) for p in procs]
    for p in procs:
        p.wait(30)

    merged = merge_receipts(dones)
    live = sorted(s for s, m in merged.items() if m.first > measured_at)
    incomplete = sum(1 for s in live if merged[s].count != opened)
    # The last change is the SUCCESS snapshot, after which each stream also ends.
    terminal = live.pop() if live else None
    complete = [merged[s] for s in live if merged[s].count == opened]
    last = merged[terminal] if terminal is not None and merged[terminal].count == opened else None
    return StreamsResult(
        streams=n,
        opened=opened,
        open_seconds=open_seconds,
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        redis_before=redis_before,
        redis_after=redis_after,
        redis_total_after=redis_total,
        spreads_ms=[m.spread_ms() for m in complete],
        terminal_spread_ms=last.spread_ms() if last else None,
        read_spreads_ms=[m.spread_ms(read=True) for m in complete],
        terminal_read_spread_ms=last.spread_ms(read=True) if last else None,
        incomplete_events=incomplete,
        errors=sum(r["errors"] for r in readies) + sum(d["errors"] for d in dones),
    )
