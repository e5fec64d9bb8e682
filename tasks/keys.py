"""Every name the service gives a thing in Redis, in one place, all under one prefix.

Pub/sub channels ignore database numbers, so the prefix is what keeps two deployments on one
Redis apart: it reaches keys, channels and Celery's own names alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def task(self, task_id: str) -> str:
        """The task's hash: its snapshot fields, each a JSON text."""
        return f"{self.prefix}:task:{task_id}"

    def log(self, task_id: str) -> str:
        """The task's change log, a stream whose entry ids are its seqs."""
        return f"{self.prefix}:log:{task_id}"

    def children(self, task_id: str) -> str:
        """The ids of the tasks this one sent (a chain's next step, a chord's members), a set."""
        return f"{self.prefix}:children:{task_id}"

    @property
    def global_seq(self) -> str:
        return f"{self.prefix}:gseq"

    @property
    def global_log(self) -> str:
        """Every change of every task, a stream whose entry ids are global seqs."""
        return f"{self.prefix}:glog"

    @property
    def recent(self) -> str:
        """Task ids by submission time, for listing newest first."""
        return f"{self.prefix}:recent"

    @property
    def channel(self) -> str:
        """Where every recorded change is announced (heard only while a `GET /events` is open)."""
        return f"{self.prefix}:changes"

    def task_channel(self, task_id: str) -> str:
        """Where one task's changes are announced: a web process subscribes while it streams it."""
        return f"{self.prefix}:changes:{task_id}"

    @property
    def epoch(self) -> str:
        """Names the current history of global seqs; lost with the data, so a reset shows."""
        return f"{self.prefix}:epoch"

    def revoked_session(self, session: str) -> str:
        """Set at logout, for as long as the session's cookie would still be valid: refused."""
        return f"{self.prefix}:revoked-session:{session}"

    def rate(self, caller: str, window: int) -> str:
        """One caller's recent submissions (a sorted set by time) for a limit per `window` s."""
        return f"{self.prefix}:rate:{caller}:{window}"

    # What workers record about themselves and the tasks they end (taskstream.workers).
    @property
    def workers(self) -> str:
        """Worker hostnames by their latest heartbeat (Unix time), a sorted set."""
        return f"{self.prefix}:workers"

    def worker(self, hostname: str) -> str:
        """One worker's hash: pool size, queues, heartbeat, counts of its tasks."""
        return f"{self.prefix}:worker:{hostname}"

    @property
    def outcomes(self) -> str:
        """Tasks ended, by task name and state: a hash of `name|state` -> count."""
        return f"{self.prefix}:stats:outcomes"

    def runtime_histogram(self, task: str) -> str:
        """One task name's runtimes: a hash of bucket bound -> count, plus `sum` and `count`."""
        return f"{self.prefix}:stats:runtime:{task}"

    @property
    def task_names(self) -> str:
        """The names of the tasks workers have run: what the figures are kept for, a set (bounded
        by the tasks the workers' apps register)."""
        return f"{self.prefix}:stats:names"

    def recent_runtimes(self, task: str) -> str:
        """One task name's latest runtimes as `unix time:seconds`, newest first, capped."""
        return f"{self.prefix}:stats:recent:{task}"

    def minute(self, minute: int) -> str:
        """Tasks ended in one minute (Unix time // 60), by state: a hash that expires."""
        return f"{self.prefix}:stats:minute:{minute}"

    # Celery's own names, under the same prefix.
    @property
    def celery_queue(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def celery_control_exchange(self) -> str:
        return f"{self.prefix}.control"

    @property
    def celery_event_exchange(self) -> str:
        return f"{self.prefix}.celeryev"

    @property
    def celery_key_prefix(self) -> str:
        return f"{self.prefix}:celery:"

    @property
    def celery_result_prefix(self) -> str:
        """Celery's group and chord bookkeeping (taskstream.backend); task states live in the
        record itself."""
        return f"{self.prefix}:results:"
