"""The figures as a table, on the terminal and in bench/results.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.latency import LatencyResult
from bench.streams import StreamsResult
from bench.throughput import Rate

RESULTS = Path(__file__).resolve().parent / "results.md"


def machine(load: tuple[float, float, float]) -> list[tuple[str, str]]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    hypercorn = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('hypercorn'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", f"{mem_kb / 1024 / 1024:.1f} GiB"),
        ("Python", platform.python_version()),
        ("Hypercorn", hypercorn),
        ("kernel", platform.release()),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        # Other work on the machine while the bench ran makes every figure worse.
        ("load average before the run (1, 5, 15 min)", ", ".join(f"{x:.2f}" for x in load)),
    ]


def _ok(passed: bool) -> str:
    return "yes" if passed else "**no**"


def rows(s: StreamsResult, lat: LatencyResult, opens: Rate, subs: Rate) -> list[tuple[str, ...]]:
    all_spreads = [*s.spreads_ms, *([s.terminal_spread_ms] if s.terminal_spread_ms else [])]
    worst = max(all_spreads) if all_spreads else float("nan")
    p50, p99 = lat.percentile(50), lat.percentile(99)
    return [
        ("open streams on one task", f"{s.opened:,} of {s.streams:,}", f"{s.streams:,}",
         _ok(s.opened == s.streams and s.errors == 0)),
        ("time to open them all", f"{s.open_seconds:.1f} s", "", ""),
        ("web memory per stream (RSS)", f"{s.kb_per_stream:.1f} KB", "<= 40 KB",
         _ok(s.kb_per_stream <= 40)),
        ("web RSS before / with the streams",
         f"{s.rss_before_kb / 1024:.0f} MB / {s.rss_after_kb / 1024:.0f} MB", "", ""),
        ("web's Redis connections, idle / with the streams",
         f"{s.redis_before} / {s.redis_after}", "a constant handful",
         _ok(s.redis_after <= s.redis_before + 2 and s.redis_after <= 8)),
        ("spread: first to last stream receiving a change",
         f"max {worst:.0f} ms over {len(all_spreads)} changes (progress: "
         + ", ".join(f"{x:.0f}" for x in s.spreads_ms)
         + f" ms; final REVOKED, ending every stream: {s.terminal_spread_ms or float('nan'):.0f}"
         " ms)",
         "<= 1000 ms", _ok(worst <= 1000 and s.incomplete_events == 0 and bool(all_spreads))),
        ("change-to-client latency p50", f"{p50:.2f} ms", "<= 2 ms", _ok(p50 <= 2)),
        ("change-to-client latency p99", f"{p99:.2f} ms", "<= 10 ms", _ok(p99 <= 10)),
        ("change-to-client latency max",
         f"{max(lat.samples_ms, default=float('nan')):.2f} ms "
         f"({len(lat.samples_ms)} events, {lat.streams} streams)", "", ""),
        ("stream opens a second (open, first event, close)",
         f"{opens.per_second:,.0f}/s ({opens.concurrency} clients, {opens.failed} failed)", "", ""),
        ("submissions a second (POST /tasks, add)",
         f"{subs.per_second:,.0f}/s ({subs.concurrency} clients, {subs.failed} failed)", "", ""),
    ]  # fmt: skip


def table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write(
    s: StreamsResult,
    lat: LatencyResult,
    opens: Rate,
    subs: Rate,
    notes: str,
    load: tuple[float, float, float],
) -> str:
    figures = table(("measure", "result", "target", "met"), rows(s, lat, opens, subs))
    host = table(("machine", ""), machine(load))
    text = (
        "# Benchmark results\n\n"
        "`make bench` (`python -m bench`): one Hypercorn web process, one Celery worker and a "
        "private Redis on the machine below; the load comes from separate client processes on "
        "the same machine.\n\n"
        f"{figures}\n\n{host}\n\n{notes}\n"
    )
    RESULTS.write_text(text)
    return text
