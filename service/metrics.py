"""`GET /metrics`: the Prometheus exposition, written by `prometheus_client`.

Nothing is counted for it on the per-change path: a custom collector reads, at scrape time, the
counters this process already keeps (the hub's, the request counts) and what the workers recorded
in Redis (task outcomes and runtimes by task name, workers online, queue depths), so every web
process reports the same task figures. The library writes the numbers, exactly at any size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from taskstream.monitor import Stats, Worker
from taskstream.states import TaskState
from taskstream.web import direct

if TYPE_CHECKING:
    from taskstream.web.hub import Hub


@dataclass(frozen=True)
class Scrape:
    """What one scrape reads from Redis and the broker before the exposition is written."""

    stats: Stats
    workers: list[Worker]
    # Messages waiting and tasks reserved by workers, per queue; None when the broker is away.
    depths: dict[str, int] | None
    reserved: dict[str, int]


# The label for any route or method outside the app's own: whatever an outsider sends (any path,
# a 2 KB method name) lands in one series instead of adding one.
OTHER = "other"


@dataclass
class Metrics:
    dropped_clients: int = 0
    submitted: int = 0
    cancelled: int = 0
    # (route pattern, method, status class) -> count
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # The closed label sets: the app's route rules and the methods they serve (see `label_sets`).
    routes: frozenset[str] = frozenset()
    methods: frozenset[str] = frozenset()

    def label_sets(self, routes: set[str], methods: set[str]) -> None:
        self.routes = frozenset(routes)
        self.methods = frozenset(methods)

    def dropped_client(self) -> None:
        self.dropped_clients += 1

    def request(self, route: str | None, method: str, status: int) -> None:
        route = route if route in self.routes else OTHER
        method = method if method in self.methods else OTHER
        status_class = f"{status // 100}xx" if 100 <= status <= 599 else OTHER
        self.requests[(route, method, status_class)] += 1

    def __post_init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._collector = _Collector(self)
        self._registry.register(self._collector)
        # Process figures (memory, CPU, open files), the collector's GC counts, the Python build.
        ProcessCollector(registry=self._registry)
        GCCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)

    def render(self, hub: Hub, scrape: Scrape) -> bytes:
        # No await between setting what to read and writing it out: one scrape at a time.
        self._collector.source = (hub, scrape)
        return generate_latest(self._registry)


class _Collector:
    def __init__(self, metrics: Metrics):
        self.m = metrics
        self.source: tuple[Hub, Scrape] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        self.hub, self.scrape = self.source
        yield from self._web()
        yield from self._tasks()
        yield from self._workers()

    def _web(self) -> Iterator[Metric]:
        hub, m = self.hub, self.m
        streams = GaugeMetricFamily(
            "taskstream_open_streams", "Event streams open in this process.", labels=["kind"]
        )
        streams.add_metric(["task"], hub.streams - hub.global_streams)
        streams.add_metric(["global"], hub.global_streams)
        yield streams
        yield CounterMetricFamily(
            "taskstream_events_delivered", "Changes handed to streams by the hub.", hub.delivered
        )
        yield GaugeMetricFamily(
            "taskstream_direct_connections",
            "Open connections of this process that the hub may write changes to itself.",
            direct.known(),
        )
        yield CounterMetricFamily(
            "taskstream_events_written_directly",
            "Of the changes delivered, those the hub wrote to a waiting stream's socket itself.",
            hub.written,
        )
        received = CounterMetricFamily(
            "taskstream_changes_received",
            "Changes received on the subscription, by the state they set.",
            labels=["state"],
        )
        for state in TaskState:
            received.add_metric([state], hub.by_state.get(state, 0))
        yield received
        yield CounterMetricFamily(
            "taskstream_pubsub_messages",
            "Messages this process received on its subscription (it hears only what it serves).",
            hub.received,
        )
        yield GaugeMetricFamily(
            "taskstream_pubsub_channels",
            "Channels subscribed: one per task streamed here, and one while GET /events is open.",
            hub.channels,
        )
        yield CounterMetricFamily(
            "taskstream_stream_overflows",
            "Times a slow stream's buffer filled and it re-read the stored log.",
            hub.overflows,
        )
        yield CounterMetricFamily(
            "taskstream_slow_clients_dropped",
            "Clients dropped because they stopped reading.",
            m.dropped_clients,
        )
        yield CounterMetricFamily(
            "taskstream_subscriber_reconnects",
            "Times the change subscription was lost and made again.",
            hub.reconnects,
        )
        yield GaugeMetricFamily(
            "taskstream_subscriber_live", "1 while the change subscription is live.", int(hub.live)
        )
        yield CounterMetricFamily(
            "taskstream_tasks_submitted", "Tasks accepted by this process.", m.submitted
        )
        yield CounterMetricFamily(
            "taskstream_tasks_cancelled", "Tasks cancelled through this process.", m.cancelled
        )
        requests = CounterMetricFamily(
            "taskstream_http_requests",
            "Requests answered, by route and status class.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in sorted(m.requests.items()):
            requests.add_metric([route, method, status], n)
        yield requests

    def _tasks(self) -> Iterator[Metric]:
        stats = self.scrape.stats
        ended = CounterMetricFamily(
            "taskstream_tasks_ended",
            "Task attempts ended, by task name and state, as the workers recorded them "
            "(RETRY: an attempt that failed and is retried).",
            labels=["task", "state"],
        )
        for (task, state), n in sorted(stats.outcomes.items()):
            ended.add_metric([task, state], n)
        yield ended
        runtime = HistogramMetricFamily(
            "taskstream_task_runtime_seconds",
            "How long task attempts ran on the workers (started to ended), by task name.",
            labels=["task"],
        )
        for task, hist in sorted(stats.histograms.items()):
            runtime.add_metric([task], hist.buckets, hist.sum)
        yield runtime

    def _workers(self) -> Iterator[Metric]:
        workers = self.scrape.workers
        online = [w for w in workers if w.online]
        yield GaugeMetricFamily(
            "taskstream_workers_online", "Workers whose heartbeat is recent.", len(online)
        )
        yield GaugeMetricFamily(
            "taskstream_worker_pool_processes",
            "Pool processes (or threads) of the workers online.",
            sum(w.pool or 0 for w in online),
        )
        yield GaugeMetricFamily(
            "taskstream_tasks_running", "Tasks running on workers online.",
            sum(w.active for w in online),
        )  # fmt: skip
        depth = GaugeMetricFamily(
            "taskstream_queue_depth",
            "Messages waiting in each queue the workers consume.",
            labels=["queue"],
        )
        for queue, n in sorted((self.scrape.depths or {}).items()):
            depth.add_metric([queue], n)
        yield depth
        reserved = GaugeMetricFamily(
            "taskstream_queue_reserved",
            "Tasks workers took from each queue but have not started.",
            labels=["queue"],
        )
        for queue, n in sorted(self.scrape.reserved.items()):
            reserved.add_metric([queue], n)
        yield reserved
