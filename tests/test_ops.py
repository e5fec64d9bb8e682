"""The operations API and `/metrics`, against real workers: what the workers record about
themselves and their tasks, read back by the web, and the exposition read by prometheus_client's
own parser after a known workload."""

from __future__ import annotations

import re
import time

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from taskstream.keys import Keys
from tests.harness import ROOT, Service, poll_until_done, submit


def _families(base: str) -> dict:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def _samples(family, **labels: str) -> dict[str, float]:
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()) if k not in labels): (
            s.value
        )
        for s in family.samples
        if all(s.labels.get(k) == v for k, v in labels.items())
    }


def _wait(predicate, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def test_metrics_after_a_known_workload(make_service) -> None:
    svc: Service = make_service()
    svc.start_worker(concurrency=2)
    svc.start_web()
    adds = [submit(svc.url, "add", x=i, y=1)["id"] for i in range(5)]
    sleeps = [submit(svc.url, "sleep", seconds=0.3, steps=1)["id"] for _ in range(2)]
    fails = [submit(svc.url, "fail", message="on purpose")["id"] for _ in range(3)]
    flaky = submit(svc.url, "flaky", failures=1)["id"]
    for task_id in [*adds, *sleeps, *fails, flaky]:
        poll_until_done(svc.url, task_id)

    def ended() -> dict | None:
        fam = _families(svc.url)
        outcomes = {
            (s.labels["task"], s.labels["state"]): s.value
            for s in fam["taskstream_tasks_ended"].samples
            if s.name == "taskstream_tasks_ended_total"
        }
        want = {("add", "SUCCESS"): 5, ("sleep", "SUCCESS"): 2, ("fail", "FAILURE"): 3,
                ("flaky", "RETRY"): 1, ("flaky", "SUCCESS"): 1}  # fmt: skip
        return fam if all(outcomes.get(k) == v for k, v in want.items()) else None

    fam = _wait(ended, what="outcomes counted")
    runtime = fam["taskstream_task_runtime_seconds"]
    by_name = {
        (s.name, s.labels["task"], s.labels.get("le")): s.value
        for s in runtime.samples
    }  # fmt: skip
    assert by_name[("taskstream_task_runtime_seconds_count", "add", None)] == 5
    assert by_name[("taskstream_task_runtime_seconds_count", "sleep", None)] == 2
    # Each sleep ran about 0.3 s: none under 0.25 s, both within 2.5 s.
    assert by_name[("taskstream_task_runtime_seconds_bucket", "sleep", "0.25")] == 0
    assert by_name[("taskstream_task_runtime_seconds_bucket", "sleep", "2.5")] == 2
    assert by_name[("taskstream_task_runtime_seconds_bucket", "sleep", "+Inf")] == 2
    assert 0.6 <= by_name[("taskstream_task_runtime_seconds_sum", "sleep", None)] < 5
    assert fam["taskstream_workers_online"].samples[0].value == 1
    depth = {s.labels["queue"]: s.value for s in fam["taskstream_queue_depth"].samples}
    assert depth == {f"{svc.prefix}.tasks": 0}
    assert fam["taskstream_tasks_submitted"].samples[0].value == 11
    # Process metrics come with it: memory, open files, the collector's counts.
    assert fam["process_resident_memory_bytes"].samples[0].value > 0
    assert fam["process_open_fds"].samples[0].value > 0
    assert fam["python_gc_collections"].samples
    # The shipped Grafana dashboard reads only series this exposition has.
    exposed = {s.name for f in fam.values() for s in f.samples}
    grafana = (ROOT / "docs" / "grafana-dashboard.json").read_text()
    wanted = set(re.findall(r"\b((?:taskstream|process)_[a-z_]+)", grafana))
    assert wanted and wanted <= exposed, wanted - exposed


def test_counters_past_a_million_print_every_digit(make_service) -> None:
    svc: Service = make_service()
    client = redis.Redis.from_url(svc.redis_url, decode_responses=True)
    keys = Keys(svc.prefix)
    client.hset(keys.outcomes, "add|SUCCESS", 1_234_567)
    client.hset(
        keys.runtime_histogram("add"), mapping={"1.0": 1_234_567, "count": 1_234_567, "sum": 10.5}
    )
    client.close()
    svc.start_web()
    text = httpx.get(f"{svc.url}/metrics", timeout=10).text
    # `{:g}` printed this 1.23457e+06; every digit must survive the text.
    line = next(x for x in text.splitlines() if x.startswith("taskstream_tasks_ended_total{"))
    assert float(line.rsplit(" ", 1)[1]) == 1_234_567, line
    fam = {f.name: f for f in text_string_to_metric_families(text)}
    assert _samples(fam["taskstream_tasks_ended"], task="add", state="SUCCESS") == {
        "taskstream_tasks_ended_total": 1_234_567
    }
    count = _samples(fam["taskstream_task_runtime_seconds"], task="add")
    assert count["taskstream_task_runtime_seconds_count"] == 1_234_567


def test_workers_report_themselves_and_go_offline_when_killed(make_service) -> None:
    svc: Service = make_service(WORKER_OFFLINE_SECONDS="6")
    svc.start_worker(concurrency=2, name="alpha")
    doomed = svc.start_worker(concurrency=3, name="beta")
    svc.start_web()
    task_id = submit(svc.url, "sleep", seconds=30, steps=30)["id"]

    def both_online() -> dict | None:
        body = httpx.get(f"{svc.url}/workers", timeout=5).json()
        online = {w["hostname"]: w for w in body["workers"] if w["online"]}
        return online if len(online) == 2 and sum(w["active"] for w in online.values()) else None

    online = _wait(both_online, what="both workers online, one task running")
    pools = sorted(w["pool"] for w in online.values())
    assert pools == [2, 3]
    for w in online.values():
        assert w["queues"] == [f"{svc.prefix}.tasks"]
        assert time.time() - w["heartbeat"] < 5
    beta = next(name for name in online if name.startswith("beta-"))
    queues = httpx.get(f"{svc.url}/queues", timeout=5).json()
    assert queues["broker"] is True
    assert [q["name"] for q in queues["queues"]] == [f"{svc.prefix}.tasks"]
    assert sorted(queues["queues"][0]["workers"]) == sorted(online)

    killed_at = time.monotonic()
    doomed.kill()  # SIGKILL to the worker's whole process group: nothing reports its end

    def beta_offline() -> bool:
        body = httpx.get(f"{svc.url}/workers", timeout=5).json()
        return any(w["hostname"] == beta and not w["online"] for w in body["workers"])

    _wait(beta_offline, timeout=10, what="the killed worker shown offline")
    assert time.monotonic() - killed_at < 10
    httpx.delete(f"{svc.url}/tasks/{task_id}", timeout=5)


def test_a_worker_reports_its_pool_and_queues_again_after_redis_lost_them(make_service) -> None:
    # A Redis restarted without its data keeps the worker's heartbeat coming, but it said who it
    # is (pool, queues) only when it became ready: the Queues panel went empty for good.
    svc: Service = make_service()
    svc.start_worker(concurrency=2, name="alpha")
    svc.start_web()

    def described() -> dict | None:
        body = httpx.get(f"{svc.url}/workers", timeout=5).json()
        found = [w for w in body["workers"] if w["online"] and w["pool"] == 2 and w["queues"]]
        return found[0] if found else None

    hostname = _wait(described, what="the worker online")["hostname"]
    client = redis.Redis.from_url(svc.redis_url)
    client.delete(f"{svc.prefix}:worker:{hostname}", f"{svc.prefix}:workers")
    client.close()
    again = _wait(described, timeout=10, what="the worker described again")
    assert again["queues"] == [f"{svc.prefix}.tasks"]
    queues = httpx.get(f"{svc.url}/queues", timeout=5).json()
    assert [q["name"] for q in queues["queues"]] == [f"{svc.prefix}.tasks"]


def test_queue_depth_counts_waiting_messages(make_service) -> None:
    svc: Service = make_service()
    svc.start_worker(concurrency=1)
    svc.start_web()
    # One task occupies the only pool process and one more is prefetched; the rest wait.
    ids = [submit(svc.url, "sleep", seconds=20, steps=20)["id"] for _ in range(5)]

    def settled() -> dict | None:
        body = httpx.get(f"{svc.url}/queues", timeout=5).json()
        q = body["queues"][0] if body["queues"] else None
        return q if q and q["depth"] + q["reserved"] == 4 else None

    queue = _wait(settled, what="queue depth and reserved settled")
    assert queue["depth"] >= 3
    for task_id in ids:
        httpx.delete(f"{svc.url}/tasks/{task_id}", timeout=5)


def test_stats_count_states_and_throughput(make_service) -> None:
    svc: Service = make_service()
    svc.start_worker(concurrency=2)
    svc.start_web()
    for task_id in [submit(svc.url, "add", x=1, y=2)["id"] for _ in range(3)]:
        poll_until_done(svc.url, task_id)
    poll_until_done(svc.url, submit(svc.url, "fail", message="x")["id"])

    def counted() -> dict | None:
        body = httpx.get(f"{svc.url}/stats", timeout=5).json()
        return body if sum(m["SUCCESS"] for m in body["per_minute"]) == 3 else None

    body = _wait(counted, what="throughput counted")
    assert body["states"]["SUCCESS"] == 3 and body["states"]["FAILURE"] == 1
    assert body["counted"] == 4
    assert len(body["per_minute"]) == 60
    assert sum(m["FAILURE"] for m in body["per_minute"]) == 1
    add = next(r for r in body["runtimes"] if r["task"] == "add")
    assert add["count"] == 3 and 0 <= add["p50"] <= add["p95"] < 5


def test_detail_has_the_timeline_in_order(service: Service) -> None:
    task_id = submit(service.url, "sleep", seconds=0.2, steps=2)["id"]
    poll_until_done(service.url, task_id)
    body = httpx.get(f"{service.url}/tasks/{task_id}/detail", timeout=5).json()
    assert body["snapshot"]["id"] == task_id and body["snapshot"]["state"] == "SUCCESS"
    timeline = body["timeline"]
    assert [e["seq"] for e in timeline] == list(range(1, len(timeline) + 1))
    states = [e["state"] for e in timeline]
    assert states[0] == "PENDING" and states[-1] == "SUCCESS"
    assert [e["message"] for e in timeline if e["state"] == "PROGRESS"] == [
        "step 1 of 2",
        "step 2 of 2",
    ]
    missing = httpx.get(f"{service.url}/tasks/nope/detail", timeout=5)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
