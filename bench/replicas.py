"""What RECORD_MIN_REPLICAS costs: the time to record one change, with the change acknowledged
at once (0) or only once a replica has it (1, Redis WAIT), against a master with one replica."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from taskstream.keys import Keys
from taskstream.record import Change, Recorder
from tests.harness import RedisServer, accept_directly


@dataclass
class ReplicaCost:
    p50_ms: dict[int, float]
    p99_ms: dict[int, float]
    changes: int


def _percentile(data: list[float], p: float) -> float:
    data = sorted(data)
    return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]


def measure(changes: int = 2_000) -> ReplicaCost:
    master = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    try:
        client = redis.Redis.from_url(master.url, decode_responses=True)
        deadline = time.monotonic() + 20
        while client.info("replication")["connected_slaves"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            time.sleep(0.1)
        p50, p99 = {}, {}
        for wanted in (0, 1):
            rec = Recorder(client, Keys(f"benchwait{wanted}"), 600, 1000, 10_000,
                           min_replicas=wanted)  # fmt: skip
            task_id = accept_directly(rec)
            times = []
            for n in range(changes):
                started = time.perf_counter()
                rec.record(Change(task_id, {"progress": n}))
                times.append((time.perf_counter() - started) * 1000)
            p50[wanted], p99[wanted] = _percentile(times, 50), _percentile(times, 99)
        client.close()
        return ReplicaCost(p50, p99, changes)
    finally:
        replica.stop()
        master.stop()
