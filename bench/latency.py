"""Change-to-client latency: from a change's `updated_at` (stamped by the worker) to the moment
a client has the whole event."""

from __future__ import annotations

from dataclasses import dataclass

from bench.stack import Stack, client_process, hold_clients, read_report


@dataclass
class LatencyResult:
    streams: int
    samples_ms: list[float]
    errors: int
    # Other streams open on the web process meanwhile.
    background: int = 0

    def percentile(self, p: float) -> float:
        data = sorted(self.samples_ms)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]


def measure(stack: Stack, streams: int = 5, steps: int = 500, step: float = 0.01) -> LatencyResult:
    task = stack.submit("sleep", seconds=steps * step, steps=steps)
    proc = client_process(
        "latency",
        host="127.0.0.1",
        port=stack.port,
        path=f"/tasks/{task['id']}/events",
        n=streams,
        seconds=steps * step + 30,
    )
    ready = read_report(proc, "ready", 30)
    done = read_report(proc, "done", steps * step + 60)
    proc.wait(30)
    return LatencyResult(
        streams=ready["opened"],
        samples_ms=[x * 1000 for x in done["latencies"]],
        errors=done["errors"],
    )


def measure_with_open_streams(stack: Stack, open_streams: int = 5_000) -> LatencyResult:
    """As `measure`, while `open_streams` other streams (on another task) are open on the web."""
    background = stack.submit("sleep", seconds=600, steps=600)
    stack.wait_state(background["id"], {"STARTED", "PROGRESS"}, 30)
    path = f"/tasks/{background['id']}/events"
    holders = hold_clients(stack.port, path, open_streams, seconds=600)
    opened = sum(read_report(p, "ready", 300)["opened"] for p in holders)
    try:
        result = measure(stack)
    finally:
        stack.cancel(background["id"])
        for p in holders:
            read_report(p, "done", 120)
            p.wait(30)
    result.background = opened
    return result
