"""Redis Sentinel: the master is killed mid-stream; after the failover streams go on without a gap
or a repeat, submissions resume, and /readyz answers 503 meanwhile. Real processes: a master, two
replicas and a sentinel (Debian's redis-server, which is also the sentinel)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from httpx_sse import connect_sse

from tests.harness import RedisServer, Service, assert_contiguous, free_port, poll_until_done

MASTER = "tsmaster"


@dataclass
class SentinelSetup:
    master: RedisServer
    replicas: list[RedisServer]
    sentinel: subprocess.Popen[bytes]
    sentinel_port: int

    def current_master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_port, socket_timeout=1)
        try:
            return int(client.sentinel_get_master_addr_by_name(MASTER)[1])
        finally:
            client.close()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server (Debian's package) is needed for the Sentinel test"
    master = RedisServer(binary=binary).start()
    replicas = [
        RedisServer(binary=binary, extra_args=["--replicaof", "127.0.0.1", str(master.port)])
        for _ in range(2)
    ]
    for replica in replicas:
        replica.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    # Small timeouts, so that the whole failover takes a few seconds. Not below two seconds to
    # call a master down: a sentinel pings an instance a second after it links to it, and it
    # counts the wait from the link, so at one second or less a master promoted a moment ago
    # can be taken for dead before its first ping, and a second failover splits the history.
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
        f"sentinel failover-timeout {MASTER} 4000\n"
        f"sentinel parallel-syncs {MASTER} 2\n"
    )
    log = open(tmp_path / "sentinel.log", "wb")
    sentinel = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=log, stderr=log)
    setup = SentinelSetup(master, replicas, sentinel, port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if setup.current_master_port() == master.port:
                    ready = redis.Redis(port=master.port).info("replication")
                    # Connected is not enough: a replica still loading the first sync does not
                    # acknowledge WAIT, and RECORD_MIN_REPLICAS=1 would refuse the first change.
                    online = [ready.get(f"slave{i}", {}).get("state") == "online" for i in range(2)]
                    if ready["connected_slaves"] == 2 and all(online):
                        break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "sentinel and replicas did not come up"
            time.sleep(0.1)
        yield setup
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        for server in (master, *replicas):
            server.stop()


def test_failover_mid_stream_loses_nothing_and_submissions_resume(sentinel_setup, tmp_path):
    setup = sentinel_setup
    # REDIS_URL's address is the dead master's after the failover: only the sentinels count.
    svc = Service(
        setup.master.url,
        tmp_path,
        extra_env={
            "REDIS_SENTINELS": f"127.0.0.1:{setup.sentinel_port}",
            "REDIS_SENTINEL_MASTER": MASTER,
            # Acknowledged changes have reached a replica, so the failover cannot lose them.
            "RECORD_MIN_REPLICAS": "1",
        },
    )
    try:
        svc.start_worker(concurrency=2)
        svc.start_web()
        response = httpx.post(
            f"{svc.url}/tasks", json={"task": "sleep", "kwargs": {"seconds": 8, "steps": 40}}
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["id"]
        events: list[tuple[int, dict]] = []
        failures: list[BaseException] = []

        def follow() -> None:
            try:
                with (
                    httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
                    connect_sse(
                        client, "GET", f"{svc.url}/tasks/{task_id}/events?last_event_id=0"
                    ) as source,
                ):
                    for event in source.iter_sse():
                        if event.data:
                            events.append((int(event.id), json.loads(event.data)))
            except BaseException as exc:  # reported by the test thread
                failures.append(exc)

        reader = threading.Thread(target=follow)
        reader.start()
        deadline = time.monotonic() + 20
        while not any(e[1]["state"] == "PROGRESS" for e in events):
            assert time.monotonic() < deadline, "the task did not start"
            time.sleep(0.05)

        setup.master.process.kill()  # the master dies mid-stream
        setup.master.process.wait(5)
        saw_503 = False
        deadline = time.monotonic() + 30
        while True:
            try:
                status = httpx.get(f"{svc.url}/readyz", timeout=3).status_code
            except httpx.HTTPError:
                status = 0
            saw_503 = saw_503 or status == 503
            if saw_503 and status == 200:
                break
            assert time.monotonic() < deadline, "no failover seen through /readyz"
            time.sleep(0.05)
        assert setup.current_master_port() != setup.master.port

        reader.join(60)
        assert not failures, failures
        ids = [i for i, _ in events]
        assert_contiguous(ids, first=1)  # no gap, no repeat
        assert events[-1][1]["state"] == "SUCCESS"
        assert [s["seq"] for _, s in events] == ids

        # Submissions go to the new master (and Celery's broker with them).
        deadline = time.monotonic() + 30
        while True:
            answer = httpx.post(f"{svc.url}/tasks", json={"task": "add", "args": [2, 3]})
            if answer.status_code == 202:
                break
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < deadline, "submissions did not resume"
            time.sleep(0.2)
        done = poll_until_done(svc.url, answer.json()["id"])
        assert done["state"] == "SUCCESS" and done["result"] == 5
    finally:
        svc.stop()
