"""The harness for real processes: a Redis server, Celery workers and web processes, and the
helpers that talk to them. The tests (fixtures in conftest.py), the benchmark (bench/stack.py) and
the soak (bench/soak.py) all start their processes here; the production launcher
(taskstream.web.launch) keeps only what `make run` needs.

Redis: the one at REDIS_URL when it is set and answers, else a private redis-server. Every
deployment uses a key prefix of its own, so its keys, queues and pub/sub channels never meet
anyone else's on a shared server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from taskstream.keys import Keys
from taskstream.record import Change, Recorder, Status, ending, new_task_fields, utcnow
from taskstream.web.launch import (
    PrivateRedis,
    free_port,
    redis_answers,
    wait_until_ready,
    web_command,
    worker_command,
)

# Re-exported: tests and bench take everything about processes from here.
__all__ = ["free_port", "redis_answers", "wait_until_ready", "web_command", "worker_command"]

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def new_prefix() -> str:
    return f"test{uuid.uuid4().hex[:10]}"


@dataclass
class RedisServer(PrivateRedis):
    """The launcher's private redis-server, with what faults and security need: a password or
    TLS (`extra_args`, `url`), another build (`binary`), persistence, and restarts."""

    extra_args: list[str] = field(default_factory=list)
    binary: str | None = None
    # Keep data across a restart (an RDB file in `workdir`), as a production Redis would.
    persist: bool = False

    def command(self) -> list[str]:
        cmd = super().command()
        if self.binary:
            cmd[0] = self.binary
        if self.persist:
            at = cmd.index("--save")
            cmd[at + 1 : at + 2] = ["3600", "1"]
        return cmd + self.extra_args

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the server and start it again on the same port and folder."""
        self.halt()
        time.sleep(down_seconds)
        self.start()

    def halt(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Proc:
    """One child process of the service, with its output kept in a log file for failures."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_dir: Path
    popen: subprocess.Popen[bytes] | None = None
    # The directory it starts in: a Celery project's own, for tests of one.
    cwd: Path = ROOT

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> Proc:
        log = open(self.log_path, "ab")
        # A session of its own, so a kill reaches the whole process group (pool children too).
        self.popen = subprocess.Popen(
            self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal_group(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signal_group(signal.SIGCONT)  # a paused process (bench) could not act on SIGTERM
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Service:
    """A deployment under test: its environment, web processes and workers."""

    redis_url: str
    log_dir: Path
    prefix: str = field(default_factory=new_prefix)
    extra_env: dict[str, str] = field(default_factory=dict)
    webs: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    # Where its processes start; with CELERY_APP in extra_env, the worker runs that app.
    cwd: Path = ROOT

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            KEY_PREFIX=self.prefix,
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
            # One process per web the test starts, so each answers for itself (tests that run
            # several on one port set it).
            WEB_CONCURRENCY="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def url_of(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def start_worker(
        self, concurrency: int = 4, name: str | None = None, wait: bool = True
    ) -> Proc:
        """A worker; `wait` for its " ready." line (which a LOG_LEVEL above INFO hides)."""
        name = name or f"worker{len(self.workers)}"
        hostname = f"{name}-{self.prefix}@%h"
        cmd = worker_command(concurrency, hostname, app=self.env.get("CELERY_APP", ""))
        proc = Proc(name, cmd, self.env, self.log_dir, cwd=self.cwd).start()
        self.workers.append(proc)
        if wait:
            wait_for_worker(proc)
        return proc

    def start_web(
        self, port: int | None = None, extra_args: tuple[str, ...] = (), timeout: float = 30
    ) -> Proc:
        port = port or free_port()
        index = len(self.webs)
        cmd = web_command("127.0.0.1", port) + list(extra_args)
        proc = Proc(f"web{index}", cmd, self.env, self.log_dir, cwd=self.cwd)
        proc.start()
        self.webs.append(proc)
        self.ports.append(port)
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout)
        return proc

    def restart_web(self, index: int = 0) -> Proc:
        """Stop web process `index` and start a new one on the same port."""
        self.webs[index].stop()
        proc = Proc(
            f"web{index}-{int(time.time() * 1000)}",
            web_command("127.0.0.1", self.ports[index]),
            self.env,
            self.log_dir,
            cwd=self.cwd,
        ).start()
        self.webs[index] = proc
        wait_ready(self.url_of(index), proc)
        return proc

    @contextmanager
    def running(self, concurrency: int = 4, webs: int = 1) -> Iterator[Service]:
        """A worker and `webs` web processes for the block; everything stops when it ends."""
        try:
            self.start_worker(concurrency)
            for _ in range(webs):
                self.start_web()
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        for proc in self.webs + self.workers:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.webs + self.workers)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a web's served processes, a worker's pool)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces: the parent pid is the 2nd field after its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_ready(url: str, proc: Proc, timeout: float = 30) -> None:
    if not wait_until_ready(
        url, timeout, lambda: proc.popen is not None and proc.popen.poll() is None
    ):
        raise RuntimeError(f"{proc.name} not ready in {timeout}s:\n{proc.tail()}")


def wait_for_worker(proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if " ready." in proc.tail(200):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready in {timeout}s:\n{proc.tail()}")


def submit(base: str, task: str, **kwargs: object) -> dict:
    response = httpx.post(f"{base}/tasks", json={"task": task, "kwargs": kwargs}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()


def poll_until_done(base: str, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = httpx.get(f"{base}/tasks/{task_id}", timeout=5).json()
        if snap["state"] in TERMINAL:
            return snap
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not done in {timeout}s: {snap}")


def read_stream(
    base: str,
    task_id: str,
    headers: dict[str, str] | None = None,
    query: str = "",
    timeout: float = 60,
    max_events: int | None = None,
) -> list[tuple[int, dict]]:
    """Read a task's stream with httpx-sse, an SSE parser independent of the server's code."""
    from httpx_sse import connect_sse

    events: list[tuple[int, dict]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(timeout, connect=5)) as client,
        connect_sse(
            client, "GET", f"{base}/tasks/{task_id}/events{query}", headers=dict(headers or {})
        ) as source,
    ):
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if not sse.data:  # the `retry:` block: a browser dispatches no event for it
                continue
            events.append((int(sse.id), json.loads(sse.data)))
            if max_events is not None and len(events) >= max_events:
                break
    return events


def metric(base: str, name: str, verify: ssl.SSLContext | bool = True) -> float:
    """A taskstream_ metric of the web process at `base`, summed over its labels."""
    text = httpx.get(f"{base}/metrics", verify=verify).text
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"taskstream_{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=taskstream-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext")  # fmt: skip
    return {name: folder / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}


def assert_contiguous(ids: list[int], first: int | None = None) -> None:
    assert ids, "no events"
    if first is not None:
        assert ids[0] == first, ids
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids


def direct_recorder(svc: Service) -> Recorder:
    """The deployment's record, written to directly as a worker would (close its `.client`)."""
    client = redis.Redis.from_url(svc.redis_url, decode_responses=True)
    return Recorder(client, Keys(svc.prefix), ttl=600, retain=1000, global_retain=10000)


def accept_directly(recorder: Recorder, task: str = "sleep") -> str:
    """Record a task as accepted (PENDING), as POST /tasks does, without queueing it."""
    task_id = str(uuid.uuid4())
    now = utcnow()
    outcome = recorder.record(
        Change(task_id, new_task_fields(task_id, task, now), create=True, score=time.time(), at=now)
    )
    assert outcome.status is Status.RECORDED
    return task_id


def ended_directly(svc: Service, fields: dict[str, object]) -> str:
    """A task recorded as accepted, then ended with `fields`, as a worker records its end."""
    recorder = direct_recorder(svc)
    try:
        task_id = accept_directly(recorder)
        recorder.record(ending(task_id, fields))
    finally:
        recorder.client.close()
    return task_id


def python() -> str:
    return sys.executable


def rabbitmq_answers(url: str, wait: float = 2.0) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=wait) as conn:
            conn.ensure_connection(max_retries=1, timeout=wait)
        return True
    except Exception:
        return False


@dataclass
class PrivateRabbit:
    """Debian's rabbitmq-server as a node of our own on free loopback ports, its data in a
    temporary folder, for when no RabbitMQ answers on 127.0.0.1:5672."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 90) -> PrivateRabbit:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        node = f"taskstream{self.port}@localhost"
        env = {
            **os.environ,
            "HOME": str(self.workdir),  # its own Erlang cookie
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(config),
            # Not the system's env file, which names the system's node.
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        log = open(self.workdir / "server.log", "ab")
        self.process = subprocess.Popen(
            ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
            env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not rabbitmq_answers(self.url, 0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.workdir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the private rabbitmq-server did not start:\n{tail}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # The whole group: the start script, the Erlang VM and epmd-less helpers it runs.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The viewport the browser tests open pages in unless they say otherwise.
DESKTOP = {"width": 1280, "height": 900}


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_chromium() -> str:
    """Debian's Chromium (`make system-deps` installs it). Without it a developer's run skips the
    browser tests; under CI (CI=true) they fail, since a skip there would hide a missing part."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"no Chromium at {CHROMIUM}: run `make system-deps`"
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)
