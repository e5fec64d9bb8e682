"""`python -m taskstream.web.serve`: WEB_CONCURRENCY web processes on one port, each serving the
app in its own main process (the Procfile and `make run` start the web this way).

Hypercorn's own `--workers` runs the app in children of a supervisor, so SIGTERM to the pid that
`kill`, Docker, Kubernetes or supervisord knows never reaches the app, and open streams are torn
only after the graceful timeout. Here the process that gets the signal is one that serves: it ends
its streams at once (clients resume elsewhere with Last-Event-ID), passes the signal on to the
other web processes it started, and exits as soon as its responses are done.

Every process binds the port with SO_REUSEPORT, so the kernel spreads new connections over them.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import gc
import logging
import os
import signal
import socket
import subprocess
import sys

log = logging.getLogger("taskstream.web.serve")

_PR_SET_PDEATHSIG = 1
# How long open requests other than streams may take to finish after SIGTERM.
GRACEFUL_SECONDS = 10.0


def port_in_use(host: str, port: int) -> bool:
    """Whether a server listens on host:port already. Every process of a deployment binds with
    SO_REUSEPORT, which would also let a second, unrelated server bind beside it and take a
    share of its connections unnoticed; a socket without it cannot bind there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no server
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _die_with_parent() -> None:
    """A sibling process started by the main one ends when that one is gone, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def tune_gc() -> None:
    # Thousands of open streams make CPython's full collections long (~0.6 s for 5,000 streams
    # on a 2-core VM: the loop stops and every stream waits). Each change leaves every waiting
    # stream with fresh objects for its next wait; at the default young threshold (700) they are
    # promoted to the oldest generation within one fan-out, which starts a full collection every
    # few changes. At 10,000 they die young instead. Freezing takes the import-time objects out
    # of every collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class _Siblings:
    """The other web processes of this port, started and watched by the main one."""

    def __init__(self, count: int, bind: str):
        self.count = count
        self.bind = bind
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "taskstream.web.serve", "--bind", self.bind, "--sibling"]
        return subprocess.Popen(cmd)

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]

    async def watch(self) -> None:
        """Start again a sibling that died (not one that was told to stop)."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self.stopping:
                    log.warning("web process %d exited with %s; starting another", proc.pid,
                                proc.returncode)  # fmt: skip
                    self.procs[i] = self._spawn()

    def signal(self, signum: int) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def wait(self, timeout: float) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _serve(sock: socket.socket, siblings: _Siblings | None) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from taskstream import logs
    from taskstream.settings import Settings
    from taskstream.web import h2_window, lean, read_ahead
    from taskstream.web.app import create_app
    from taskstream.web.services import Services

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    # Hypercorn would not hear a client that half-closes with a request queued (see the module).
    read_ahead.install()
    # An HTTP/2 client that grants no window would be buffered for without bound (the module).
    h2_window.install()
    lean.install()
    app = create_app(settings)
    svc: Services = app.extensions["taskstream"]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.root_path = settings.root_path
    config.backlog = 4096
    config.graceful_timeout = GRACEFUL_SECONDS
    config.accesslog = None
    # Hypercorn's lines through the service's own logging (text or JSON), once.
    config.errorlog = logging.getLogger("hypercorn.error")
    tune_gc()

    shutdown = asyncio.Event()

    def on_signal(signum: int) -> None:
        if shutdown.is_set():
            return
        log.info("signal %d: ending open streams and stopping", signum)
        # Streams first: Hypercorn waits for open responses, and a stream never ends by itself.
        svc.hub.close_streams()
        if siblings is not None:
            siblings.signal(signal.SIGTERM)
        shutdown.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    watcher = asyncio.create_task(siblings.watch()) if siblings is not None else None
    try:
        await serve(app, config, shutdown_trigger=shutdown.wait)
    finally:
        if watcher is not None:
            watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    from taskstream.settings import Settings, SettingsError
    from taskstream.web.launch import raise_open_file_limit

    parser = argparse.ArgumentParser(prog="python -m taskstream.web.serve")
    parser.add_argument("--bind", help="host:port (default: HOST and PORT)")
    # Internal: a process started by the main one, which watches it and signals it.
    parser.add_argument("--sibling", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    bind = args.bind or f"{settings.host}:{settings.port}"
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if args.sibling:
        _die_with_parent()
        if os.getppid() == 1:
            return 0
    raise_open_file_limit()
    if not args.sibling and int(port) and port_in_use(host, int(port)):
        print(f"{host}:{port} is in use: another server listens there", file=sys.stderr)
        return 1
    sock = listening_socket(host, int(port))
    siblings = None
    if not args.sibling and settings.web_processes > 1:
        # Started before this process makes any thread or connection.
        siblings = _Siblings(settings.web_processes - 1, bind)
        siblings.start()
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(sock, siblings))
    finally:
        if siblings is not None:
            siblings.signal(signal.SIGTERM)
            siblings.wait(GRACEFUL_SECONDS + 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
