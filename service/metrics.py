"""`GET /metrics`: this web process's counters in the Prometheus text format."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskstream.states import TaskState

if TYPE_CHECKING:
    from taskstream.web.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

    def render(self, hub: Hub) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP taskstream_{name} {help_text}")
            lines.append(f"# TYPE taskstream_{name} {kind}")
            for labels, value in samples:
                lines.append(f"taskstream_{name}{labels} {value:g}")

        task_streams = hub.streams - hub.global_streams
        metric(
            "open_streams",
            "gauge",
            "Event streams open in this process.",
            [('{kind="task"}', task_streams), ('{kind="global"}', hub.global_streams)],
        )
        metric(
            "events_delivered_total",
            "counter",
            "Changes handed to streams by the hub.",
            [("", hub.delivered)],
        )
        metric(
            "changes_received_total",
            "counter",
            "Changes received on the subscription, by the state they set.",
            [(f'{{state="{state}"}}', n) for state, n in sorted(hub.by_state.items())]
            or [(f'{{state="{TaskState.PENDING}"}}', 0)],
        )
        metric(
            "pubsub_messages_total",
            "counter",
            "Messages this process received on its subscription (it hears only what it serves).",
            [("", hub.received)],
        )
        metric(
            "pubsub_channels",
            "gauge",
            "Channels subscribed: one per task streamed here, and one while GET /events is open.",
            [("", hub.channels)],
        )
        metric(
            "stream_overflows_total",
            "counter",
            "Times a slow stream's buffer filled and it re-read the stored log.",
            [("", hub.overflows)],
        )
        metric(
            "slow_clients_dropped_total",
            "counter",
            "Clients dropped because they stopped reading.",
            [("", self.dropped_clients)],
        )
        metric(
            "subscriber_reconnects_total",
            "counter",
            "Times the change subscription was lost and made again.",
            [("", hub.reconnects)],
        )
        metric(
            "subscriber_live",
            "gauge",
            "1 while the change subscription is live.",
            [("", 1 if hub.live else 0)],
        )
        metric(
            "tasks_submitted_total",
            "counter",
            "Tasks accepted by this process.",
            [("", self.submitted)],
        )
        metric(
            "tasks_cancelled_total",
            "counter",
            "Tasks cancelled through this process.",
            [("", self.cancelled)],
        )
        metric(
            "http_requests_total",
            "counter",
            "Requests answered, by route and status class.",
            [
                (f'{{route="{r}",method="{m}",status="{s}"}}', n)
                for (r, m, s), n in sorted(self.requests.items())
            ],
        )
        return "\n".join(lines) + "\n"
