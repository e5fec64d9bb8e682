"""The system under measurement: a private Redis, one worker and ONE web process of our own.

BENCH_LOG_LEVEL sets the web's and worker's LOG_LEVEL (default: the service's own, INFO).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.client import SeqStat
from tests.harness import ROOT, Proc, RedisServer, Service, free_port


@dataclass
class Stack:
    worker_concurrency: int = 2
    prefix: str = "bench"
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="taskstream-bench-")))
    redis: RedisServer = field(default_factory=RedisServer)
    port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def web(self) -> Proc:
        assert self.service is not None
        return self.service.webs[0]

    @property
    def worker(self) -> Proc:
        assert self.service is not None
        return self.service.workers[0]

    def start(self) -> Stack:
        self.redis.start()
        # The service's own log level (INFO: a line per accepted task) unless asked otherwise.
        level = os.environ.get("BENCH_LOG_LEVEL")
        extra_env = {"LOG_LEVEL": level} if level else {}
        self.service = Service(self.redis.url, self.logdir, self.prefix, extra_env)
        # The worker is ready when it has run a task (below): its log may not say so.
        self.service.start_worker(self.worker_concurrency, name="worker", wait=False)
        self.service.start_web(self.port, timeout=60)
        task = self.submit("add", x=1, y=2)
        self.wait_done(task["id"], 60)
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        self.redis.stop()

    def tail(self, name: str, lines: int = 30) -> str:
        procs = self.service.webs + self.service.workers if self.service else []
        return next((p.tail(lines) for p in procs if p.name.startswith(name)), "")

    def pause_worker(self, paused: bool) -> None:
        self.worker.signal_group(signal.SIGSTOP if paused else signal.SIGCONT)

    # --- the HTTP API, for setting up each measurement

    def submit(self, task: str, **kwargs: Any) -> dict[str, Any]:
        r = httpx.post(self.base + "/tasks", json={"task": task, "kwargs": kwargs}, timeout=10)
        r.raise_for_status()
        return r.json()

    def get(self, task_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.base}/tasks/{task_id}", timeout=10).json()

    def cancel(self, task_id: str) -> None:
        httpx.delete(f"{self.base}/tasks/{task_id}", timeout=10)

    def wait_state(self, task_id: str, states: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            snap = self.get(task_id)
            if snap["state"] in states:
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {snap['state']}")
            time.sleep(0.05)

    def wait_done(self, task_id: str, timeout: float) -> dict[str, Any]:
        return self.wait_state(task_id, {"SUCCESS", "FAILURE", "REVOKED"}, timeout)

    # --- the web process, seen from outside

    def app_pid(self) -> int:
        """The process that serves the app: the web's main process (WEB_CONCURRENCY=1)."""
        return self.web.pid

    def rss_kb(self) -> int:
        return _status_kb(self.app_pid(), "VmRSS")

    def redis_connections(self) -> tuple[int, int]:
        """(connections the web process holds to Redis, all connections Redis has)."""
        ports = _tcp_local_ports(self.app_pid())
        client = redis.Redis.from_url(self.redis.url)
        try:
            clients = client.client_list()
        finally:
            client.close()
        mine = sum(1 for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ports)
        return mine, len(clients)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a running process has spent, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def client_process(mode: str, **args: Any) -> subprocess.Popen[str]:
    """A load generator of its own (bench.client), reporting on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.client", mode, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def hold_clients(
    port: int, path: str, n: int, clients: int = 2, seconds: float = 120
) -> list[subprocess.Popen[str]]:
    """`clients` load generators that open `n` streams to `path` in all and hold them."""
    share = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    return [
        client_process(
            "hold", host="127.0.0.1", port=port, path=path, n=k, parallel=100, seconds=seconds
        )
        for k in share
    ]


def read_report(proc: subprocess.Popen[str], kind: str, timeout: float) -> dict[str, Any]:
    """The next report of `kind` from a client process."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client exited ({proc.wait()}) before reporting {kind}")
        report = json.loads(line)
        if report["kind"] == kind:
            return report
    raise TimeoutError(f"no {kind} report within {timeout} s")


def merge_receipts(dones: list[dict[str, Any]]) -> dict[int, SeqStat]:
    """Per event id, over the `done` reports of `hold` clients: receipts, arrivals and reads."""
    merged: dict[int, SeqStat] = {}
    for done in dones:
        for seq, values in done["seqs"].items():
            stat = SeqStat(*values)
            if (m := merged.get(int(seq))) is None:
                merged[int(seq)] = stat
            else:
                m.merge(stat)
    return merged


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _tcp_local_ports(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports
