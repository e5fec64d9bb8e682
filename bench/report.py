"""The figures as a table, on the terminal and in bench/results.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.fleet import FleetResult
from bench.hub_cost import HubCost
from bench.latency import LatencyResult
from bench.replicas import ReplicaCost
from bench.streams import StreamsResult
from bench.submissions import SubmitResult
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


@dataclass
class Figures:
    many: StreamsResult
    lat: LatencyResult
    lat_alone: LatencyResult
    opens: Rate
    subs: SubmitResult
    hub: HubCost
    fleet: FleetResult
    replicas: ReplicaCost
    floor_ms: list[float]  # bench.floor: the spread a bare uvloop loop achieves here
    floor_read_ms: list[float]  # ... as the clients read it
    send_us: float  # bench.floor.send_cost: the kernel's loopback send of one event
    round_trip_us: tuple[float, float]  # bench.floor.round_trip: busy, after 10 ms idle
    core_scaling: list[float]  # bench.cores: two CPU-bound processes' work over one's


def rows(f: Figures) -> list[tuple[str, ...]]:
    s, lat, subs, hub, fleet, rep = f.many, f.lat, f.subs, f.hub, f.fleet, f.replicas
    all_spreads = [*s.spreads_ms, *([s.terminal_spread_ms] if s.terminal_spread_ms else [])]
    worst = max(all_spreads) if all_spreads else float("nan")
    terminal = s.terminal_spread_ms or float("nan")
    p50, p99 = lat.percentile(50), lat.percentile(99)
    idle = fleet.webs[1:]
    idle_cpu = max(w.cpu_ms - w.idle_cpu_ms for w in idle)
    idle_msgs = max(w.messages for w in idle)
    served = fleet.webs[0]
    return [
        ("hub CPU per change this process does not serve", f"{hub.not_served_us:.1f} µs "
         f"({hub.received_not_served} of {hub.changes:,} such changes received)", "~0",
         _ok(hub.received_not_served == 0)),
        ("hub CPU per change served, up to the write, to a stream written directly (HTTP/1.1)",
         f"{hub.served_direct_us:.0f} µs at {hub.rate:,}/s", "<= 50 µs",
         _ok(hub.served_direct_us <= 50)),
        ("... to a stream whose task sends it (HTTP/2, mounted)",
         f"{hub.served_us:.0f} µs at {hub.rate:,}/s; {hub.served_burst_us:.0f} µs in a burst",
         "", ""),
        ("4 web processes, 1 streaming 1 task, other tasks changing",
         f"{fleet.rate:,.0f} changes/s for {fleet.seconds:.0f} s: each of the other 3 received "
         f"<= {idle_msgs} messages and spent <= {idle_cpu:.0f} ms CPU more than idle; the "
         f"streaming one received {served.messages} ({served.served_events} events sent), "
         f"{served.cpu_ms:.0f} ms CPU", "other 3 near idle",
         _ok(idle_msgs == 0 and idle_cpu <= 0.01 * fleet.seconds * 1000)),
        ("open streams on one task", f"{s.opened:,} of {s.streams:,}", f"{s.streams:,}",
         _ok(s.opened == s.streams and s.errors == 0)),
        ("time to open them all", f"{s.open_seconds:.1f} s", "", ""),
        ("web memory per stream (RSS)", f"{s.kb_per_stream:.1f} KB", "<= 32 KB",
         _ok(s.kb_per_stream <= 32)),
        ("web RSS before / with the streams",
         f"{s.rss_before_kb / 1024:.0f} MB / {s.rss_after_kb / 1024:.0f} MB", "", ""),
        # The web's own: a pool of at most 4, its subscription, and Celery's broker connections
        # (cancel's revoke); none of them per stream.
        ("web's Redis connections, idle / with the streams",
         f"{s.redis_before} / {s.redis_after}", "a handful (<= 10), not one a stream",
         _ok(s.redis_after <= 10)),
        ("spread: first to last stream receiving a change (kernel's arrival stamp)",
         f"max {worst:.0f} ms over {len(all_spreads)} changes ("
         + ", ".join(f"{x:.0f}" for x in s.spreads_ms)
         + f" ms; the last, SUCCESS, ending every stream: {terminal:.0f} ms)",
         "<= 100 ms", _ok(worst <= 100 and s.incomplete_events == 0 and bool(all_spreads))),
        ("... as read by the client processes, which share the 2 cores with the web",
         ", ".join(f"{x:.0f}" for x in s.read_spreads_ms)
         + f" ms; SUCCESS: {s.terminal_read_spread_ms or float('nan'):.0f} ms", "", ""),
        ("... the machine's floor: a bare uvloop loop writing the same bytes to 10,000 sockets",
         ", ".join(f"{x:.0f}" for x in f.floor_ms) + " ms by arrival; "
         + ", ".join(f"{x:.0f}" for x in f.floor_read_ms) + " ms as read", "", ""),
        ("... under it, the kernel's loopback send of one event, nobody reading",
         f"{f.send_us:.1f} µs a send: {f.send_us * 10:.0f} ms for 10,000", "", ""),
        ("change-to-client latency, nothing else open: p50 / p99",
         f"{f.lat_alone.percentile(50):.2f} / {f.lat_alone.percentile(99):.2f} ms "
         f"({len(f.lat_alone.samples_ms)} events, {f.lat_alone.streams} streams)",
         "<= 1.2 / 3 ms", _ok(f.lat_alone.percentile(50) <= 1.2
                              and f.lat_alone.percentile(99) <= 3)),
        ("... the machine's floor: a Redis PING round trip, back to back / after 10 ms idle",
         f"{f.round_trip_us[0]:.0f} / {f.round_trip_us[1]:.0f} µs", "", ""),
        (f"change-to-client latency p50 ({lat.background:,} other streams open on a task "
         "changing every second)",
         f"{p50:.2f} ms", "<= 1.2 ms", _ok(p50 <= 1.2)),
        ("change-to-client latency p99", f"{p99:.2f} ms", "<= 3 ms", _ok(p99 <= 3)),
        ("change-to-client latency max",
         f"{max(lat.samples_ms, default=float('nan')):.2f} ms "
         f"({len(lat.samples_ms)} events, {lat.streams} streams)", "", ""),
        ("stream opens a second (open, first event, close)",
         f"{f.opens.per_second:,.0f}/s ({f.opens.concurrency} clients, {f.opens.failed} failed)",
         "", ""),
        ("submissions a second, one web process (POST /tasks, add)",
         f"{subs.ours.with_runs()}; {subs.ours.concurrency} clients, "
         f"{subs.ours.failed} failed; {_cpu(subs.ours)}", "", ""),
        ("... a plain Quart route calling `task.apply_async`",
         f"{subs.plain.with_runs()}: ours is {subs.ratio:.2f}x; {_cpu(subs.plain)}", ">= 1.5x",
         _ok(subs.ratio >= 1.5)),
        ("... two web processes (WEB_CONCURRENCY=2) on the port",
         f"{subs.two.with_runs()}: {subs.scaling:.2f}x one; {_cpu(subs.two)}", "~2x",
         _ok(subs.scaling >= 1.8)),
        ("... the machine's own: two CPU-bound Python processes at once, over one",
         ", ".join(f"{x:.2f}x" for x in f.core_scaling), "", ""),
        ("record one change, RECORD_MIN_REPLICAS=0 / 1 (p50)",
         f"{rep.p50_ms[0]:.2f} / {rep.p50_ms[1]:.2f} ms", "measured", ""),
        ("record one change, RECORD_MIN_REPLICAS=0 / 1 (p99)",
         f"{rep.p99_ms[0]:.2f} / {rep.p99_ms[1]:.2f} ms ({rep.changes:,} changes each)",
         "measured", ""),
    ]  # fmt: skip


def _cpu(rate: Rate) -> str:
    """Where the machine's cores went during the median run."""
    return (
        f"web {rate.cpu_per_item_us('web'):,.0f} µs of CPU a submission; cores busy: "
        + ", ".join(f"{part} {rate.cores(part):.2f}" for part in ("web", "load generator", "Redis"))
    )


def table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write(f: Figures, notes: str, load: tuple[float, float, float]) -> str:
    figures = table(("measure", "result", "target", "met"), rows(f))
    host = table(("machine", ""), machine(load))
    profile = "\n".join(f"- {name}: {share:.0f}%" for name, share in f.subs.profile)
    text = (
        "# Benchmark results\n\n"
        "`make bench` (`python -m bench`): a private Redis, one Celery worker and the web "
        "processes named in each row, on the machine below; the load comes from separate "
        "client processes on the same machine.\n\n"
        f"{figures}\n\n{host}\n\n"
        "Where one web process's time goes while it accepts submissions (py-spy, samples of "
        f"threads at work):\n\n{profile or '- (py-spy took no samples)'}\n\n{notes}\n"
    )
    RESULTS.write_text(text)
    return text
