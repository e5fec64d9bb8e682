"""The shapes of the operations API behind the dashboard (service/ops_routes.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from taskstream.web.models import TaskSnapshot


class WorkerInfo(BaseModel):
    """One worker, as it last reported itself in Redis."""

    hostname: str = Field(description="Celery's node name, `name@host`.")
    online: bool = Field(description="Its latest heartbeat is recent (WORKER_OFFLINE_SECONDS).")
    pid: int | None = Field(description="The worker's main process id.")
    pool: int | None = Field(description="How many tasks it can run at once.")
    queues: list[str] = Field(description="The queues it consumes.")
    active: int = Field(ge=0, description="Tasks running now (0 once offline).")
    reserved: int = Field(ge=0, description="Tasks taken from the queue, not started yet.")
    processed: int = Field(ge=0, description="Task attempts ended since it started.")
    failed: int = Field(ge=0, description="Of those, attempts that failed.")
    started_at: float | None = Field(description="When it became ready (Unix time).")
    heartbeat: float | None = Field(description="Its latest heartbeat (Unix time).")


class Workers(BaseModel):
    """Every worker that reported itself, online or not."""

    workers: list[WorkerInfo]
    offline_after: float = Field(description="Seconds without a heartbeat before offline.")
    now: float = Field(description="The server's clock (Unix time), to age heartbeats against.")


class QueueInfo(BaseModel):
    name: str
    depth: int | None = Field(description="Messages waiting; null when the broker did not answer.")
    reserved: int = Field(ge=0, description="Tasks workers took from it but have not started.")
    workers: list[str] = Field(description="Online workers consuming it.")


class Queues(BaseModel):
    """Each queue the online workers consume."""

    queues: list[QueueInfo]
    broker: bool = Field(description="Whether the broker answered.")


class MinuteCounts(BaseModel):
    minute: int = Field(description="The minute's start (Unix time).")
    SUCCESS: int
    FAILURE: int
    RETRY: int
    REVOKED: int


class RuntimeSummary(BaseModel):
    task: str
    count: int = Field(description="Runs in the last hour (at most the latest 1,000 are kept).")
    p50: float | None = Field(description="Median runtime in seconds.")
    p95: float | None = Field(description="95th percentile runtime in seconds.")


class Stats(BaseModel):
    """Counts per state, and throughput over the last hour: for an admin (or with authentication
    off) the deployment's, as the workers recorded it; for any other caller, that of its own
    tasks among the newest 10,000 (each counted once by how it ended, retries not apart)."""

    states: dict[str, int] = Field(
        description="Tasks per current state, among the newest tasks the caller may see "
        "(up to `counted`)."
    )
    counted: int = Field(description="How many tasks were counted.")
    per_minute: list[MinuteCounts] = Field(description="Attempts ended per minute, oldest first.")
    runtimes: list[RuntimeSummary]


class TimelineEntry(BaseModel):
    seq: int
    state: str
    at: str = Field(description="When the change happened (UTC, ISO 8601).")
    progress: Any = Field(None, description="The progress reported with it, if any.")
    message: str | None = Field(None, description="The progress message, if any.")


class TaskDetail(BaseModel):
    """All the record keeps of one task: its snapshot, what it was sent with, and its timeline."""

    snapshot: TaskSnapshot
    args: Any = Field(
        None,
        description="Positional arguments as sent; over the size cap `{truncated, bytes}`.",
    )
    kwargs: Any = Field(None, description="Keyword arguments as sent, capped the same way.")
    queue: str | None = None
    worker: str | None = Field(None, description="The hostname of the worker that ran it.")
    runtime: float | None = Field(None, description="Seconds from start to end of its run.")
    parent_id: str | None = Field(None, description="The task that sent it (chain, chord).")
    root_id: str | None = None
    group_id: str | None = None
    eta: str | None = None
    rerun_of: str | None = Field(None, description="The task this one re-runs.")
    children: list[str] = Field(default_factory=list, description="Tasks this one sent.")
    timeline: list[TimelineEntry] = Field(description="Every retained change, oldest first.")
