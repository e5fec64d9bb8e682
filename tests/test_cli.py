"""The command-line client, run as a real process against the running service.

Each test runs `taskctl ...` the way a user or a script would and checks what they see:
stdout, stderr and the exit code. Dropped connections go through a small TCP proxy of our own,
which the test stops and starts again in the middle of a stream.
"""

from __future__ import annotations

import io
import json
import os
import pty
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from taskstream.client.render import LiveBar
from tests.harness import ended_directly, free_port, poll_until_done, submit

OK, FAILURE, REVOKED, USAGE, UNAVAILABLE = 0, 1, 2, 3, 4
LINE = re.compile(r"^(?P<state>[A-Z]+)\s+seq=(?P<seq>\d+)\s+(?P<percent>\d+%|-)")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TASKSTREAM_URL"}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def taskctl(
    *args: str, url: str | None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "taskstream.client", *args]
    if url is not None:
        cmd += ["--url", url]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or cli_env()
    )


class Running:
    """A taskctl process whose stdout lines are read as they come."""

    def __init__(self, *args: str, url: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskstream.client", *args, "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, predicate, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such line in {timeout}s; got {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"taskctl ended first; got {self.lines}")
            self.lines.append(line)
            if predicate(line):
                return line

    def finish(self, timeout: float = 60) -> tuple[int, list[str], str]:
        """Exit code, every stdout line, and stderr."""
        code = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        assert self.proc.stderr is not None
        return code, self.lines, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for proc in started:
        proc.kill()


class Proxy:
    """A TCP relay to the service that can be cut mid-stream, or told to refuse streams."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.refuse_streams = False
        self.requests: list[bytes] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.05)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the port and every open connection, both ways, as a crash would."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        # The port is free only once the accept thread's wait on the old socket has returned:
        # until then the kernel keeps that socket listening (on a loaded machine, past a short
        # drop's downtime: the restart on the same port failed with EADDRINUSE).
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def drop(self, downtime: float) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()

    def saw_header(self, name: str, value: str) -> bool:
        wanted = f"\r\n{name}: {value}\r\n".lower().encode()
        return any(wanted in request.lower() for request in self.requests)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` in the requests that passed, in order."""
        found = []
        for request in self.requests:
            for line in request.decode("latin-1").split("\r\n")[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == name.lower():
                    found.append(value.strip())
        return found

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client:
                    self.requests.append(data)
                    if self.refuse_streams and b"/events" in data.split(b"\r\n", 1)[0]:
                        source.sendall(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: 11\r\nConnection: close\r\n\r\nno streams\n"
                        )
                        break
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def proxy(service) -> Iterator[Proxy]:
    relay = Proxy(int(service.url.rsplit(":", 1)[1])).start()
    yield relay
    relay.stop()


def parse_lines(lines: list[str]) -> list[dict[str, str]]:
    parsed = [match.groupdict() for line in lines if (match := LINE.match(line))]
    assert parsed, lines
    return parsed


def json_lines(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def assert_contiguous_from(seqs: list[int], first: int) -> None:
    assert seqs == list(range(first, first + len(seqs))), seqs


# --- submitting and reading ----------------------------------------------------------------


def test_submit_prints_the_id_and_status_shows_the_result(service):
    submitted = taskctl("submit", "add", "x=2", "y=3", url=service.url)
    assert submitted.returncode == OK, submitted.stderr
    task_id = submitted.stdout.strip()
    poll_until_done(service.url, task_id)

    shown = taskctl("status", task_id, url=service.url)
    assert shown.returncode == OK, shown.stderr
    assert re.search(r"^state:\s+SUCCESS$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^result:\s+5$", shown.stdout, re.M), shown.stdout

    as_json = taskctl("status", task_id, "--json", url=service.url)
    assert json.loads(as_json.stdout)["result"] == 5


def test_the_service_comes_from_the_environment_variable(service):
    result = taskctl("submit", "add", "x=1", "y=1", "--follow", url=None,
                     env=cli_env(TASKSTREAM_URL=service.url))  # fmt: skip
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines()[-1] == "result: 2"


def test_values_are_json_when_they_parse_and_strings_otherwise(service):
    text = taskctl("submit", "fail", "message=it broke", "-f", url=service.url)
    assert text.returncode == FAILURE
    assert "it broke" in text.stderr

    # 42 parses as a number, which `fail` refuses; quoting it as JSON makes it a string.
    number = taskctl("submit", "fail", "message=42", url=service.url)
    assert number.returncode == USAGE
    assert "message" in number.stderr
    quoted = taskctl("submit", "fail", 'message="42"', "-f", url=service.url)
    assert quoted.returncode == FAILURE
    assert "RuntimeError: 42" in quoted.stderr

    forced = taskctl("submit", "add", "x:=1.5", "y:=2", "-f", "--json", url=service.url)
    assert json_lines(forced.stdout.splitlines())[-1]["result"] == 3.5
    not_json = taskctl("submit", "add", "x:=[1,", "y=1", url=service.url)
    assert not_json.returncode == USAGE
    assert "not JSON" in not_json.stderr


def test_positional_arguments(service):
    result = taskctl("submit", "add", "--arg", "20", "--arg", "22", "-f", url=service.url)
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines()[-1] == "result: 42"


def test_types_and_list(service):
    types = taskctl("types", url=service.url)
    assert types.returncode == OK
    assert re.search(r"^sleep\b", types.stdout, re.M)
    assert re.search(r"^\s+seconds: number, 0\.\.3600, required", types.stdout, re.M)
    assert {t["name"] for t in json_lines(taskctl("types", "--json", url=service.url).stdout
            .splitlines())} >= {"add", "sleep", "fail", "flaky"}  # fmt: skip

    for _ in range(3):
        taskctl("submit", "add", "x=1", "y=2", "-f", url=service.url)
    listed = taskctl("list", "--task", "add", "--state", "success", "--limit", "2", "--json",
                     url=service.url)  # fmt: skip
    items = json_lines(listed.stdout.splitlines())
    assert len(items) == 2
    assert {(i["task"], i["state"]) for i in items} == {("add", "SUCCESS")}
    assert "--cursor" in listed.stderr  # more pages, and how to get the next one

    table = taskctl("list", "--task", "add", "--limit", "2", url=service.url)
    assert table.stdout.splitlines()[0].split() == ["ID", "TASK", "STATE", "DONE", "UPDATED"]
    assert table.stdout.splitlines()[1].split()[:3] == [items[0]["id"], "add", "SUCCESS"]


# --- following -------------------------------------------------------------------------------


def test_follow_prints_one_line_per_change_and_exits_0(service):
    result = taskctl("submit", "sleep", "seconds=0.5", "--follow", "steps=5", url=service.url)
    assert result.returncode == OK, result.stderr
    lines = result.stdout.splitlines()
    parsed = parse_lines(lines)
    assert_contiguous_from([int(p["seq"]) for p in parsed], 1)
    assert parsed[0]["state"] == "PENDING"
    progress = [p["percent"] for p in parsed if p["state"] == "PROGRESS"]
    assert progress == ["20%", "40%", "60%", "80%", "100%"]
    assert parsed[-1]["state"] == "SUCCESS"
    assert "step 5 of 5" in lines[-2]
    assert lines[-1] == 'result: {"slept": 0.5}'


def test_json_lines_are_snapshots_with_contiguous_seqs(service):
    result = taskctl("--json", "submit", "sleep", "seconds=0.4", "steps=4", "-f", url=service.url)
    assert result.returncode == OK, result.stderr
    snaps = json_lines(result.stdout.splitlines())
    assert_contiguous_from([s["seq"] for s in snaps], 1)
    assert len({s["id"] for s in snaps}) == 1
    assert snaps[-1]["state"] == "SUCCESS"
    assert snaps[-1]["result"] == {"slept": 0.4}


def test_failure_exits_1_with_the_error_on_stderr(service):
    result = taskctl("submit", "fail", "message=disk on fire", "--follow", url=service.url)
    assert result.returncode == FAILURE
    assert "RuntimeError: disk on fire" in result.stderr
    assert parse_lines(result.stdout.splitlines())[-1]["state"] == "FAILURE"


def test_watching_a_finished_task_shows_its_end(service):
    snap = submit(service.url, "fail", message="too late")
    poll_until_done(service.url, snap["id"])
    result = taskctl("watch", snap["id"], url=service.url)
    assert result.returncode == FAILURE
    assert "too late" in result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_watch_says_why_celery_revoked_a_task(service):
    # Not every REVOKED is a cancel: a task past its `expires` is revoked by Celery itself.
    error = {"type": "TaskRevokedError", "message": "expired"}
    task_id = ended_directly(service, {"state": "REVOKED", "error": error})
    result = taskctl("watch", task_id, url=service.url)
    assert result.returncode == REVOKED
    assert f"task {task_id} was revoked: TaskRevokedError: expired" in result.stderr
    assert "cancelled" not in result.stderr


def test_cancel_makes_watch_exit_2(service, running):
    snap = submit(service.url, "sleep", seconds=20, steps=100)
    watcher = Running("watch", snap["id"], url=service.url)
    running.append(watcher)
    watcher.wait_for_line(lambda line: line.startswith("PROGRESS"))

    cancelled = taskctl("cancel", snap["id"], url=service.url)
    assert cancelled.returncode == OK, cancelled.stderr
    assert cancelled.stdout.split() == [snap["id"], "REVOKED"]

    code, lines, stderr = watcher.finish()
    assert code == REVOKED
    assert parse_lines(lines)[-1]["state"] == "REVOKED"
    assert "cancelled" in stderr

    again = taskctl("cancel", snap["id"], url=service.url)
    assert again.returncode == USAGE
    assert "Task already finished (409)" in again.stderr


def test_a_dropped_connection_resumes_without_repeats_or_gaps(service, proxy, running):
    snap = submit(service.url, "sleep", seconds=4, steps=40)
    watcher = Running("watch", snap["id"], "--json", url=proxy.url)
    running.append(watcher)

    seen = 0
    for _ in range(2):  # twice, in different places of the stream
        watcher.wait_for_line(lambda line, after=seen: json.loads(line)["seq"] >= after + 6)
        seen = json.loads(watcher.lines[-1])["seq"]
        proxy.drop(downtime=0.2)

    code, lines, stderr = watcher.finish()
    assert code == OK, stderr
    snaps = json_lines(lines)
    seqs = [s["seq"] for s in snaps]
    assert_contiguous_from(seqs, snaps[0]["seq"])
    assert snaps[-1]["state"] == "SUCCESS"
    # It resumed by stream, from the last change it had shown (at least the one read before the
    # drop: another may have come in meanwhile), not by polling.
    resumed = [int(v) for v in proxy.header_values("Last-Event-ID")]
    assert len(resumed) >= 2 and resumed[-1] >= seen, proxy.requests
    assert all(v in seqs for v in resumed), (resumed, seqs)
    assert "connection lost" in stderr
    assert "polling" not in stderr


def test_a_quiet_stream_counts_as_contact_with_the_service(service, proxy, running):
    # No change for longer than --patience, then a drop: the open stream was contact all along,
    # so the client resumes instead of giving up.
    snap = submit(service.url, "sleep", seconds=3, steps=1)
    watcher = Running("watch", snap["id"], "--json", "--patience", "1", url=proxy.url)
    running.append(watcher)
    watcher.wait_for_line(lambda line: json.loads(line)["state"] == "STARTED")
    time.sleep(1.5)
    proxy.drop(downtime=0.2)
    code, lines, stderr = watcher.finish()
    assert code == OK, stderr
    assert json.loads(lines[-1])["state"] == "SUCCESS"


def test_falls_back_to_polling_when_streams_keep_failing(service, proxy, running):
    proxy.refuse_streams = True
    # Longer than the ~4 s of stream attempts before polling.
    snap = submit(service.url, "sleep", seconds=6, steps=3)
    result = taskctl("watch", snap["id"], "--json", url=proxy.url)
    assert result.returncode == OK, result.stderr
    assert "polling instead" in result.stderr
    seqs = [s["seq"] for s in json_lines(result.stdout.splitlines())]
    assert seqs == sorted(set(seqs))  # polling may skip a change, but never repeats one
    assert json.loads(result.stdout.splitlines()[-1])["state"] == "SUCCESS"


def test_live_bar_on_a_terminal(service):
    # A pseudo-terminal makes stdout a TTY, as in an interactive shell.
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskstream.client", "submit", "sleep", "seconds=0.4", "steps=4",
         "-f", "--url", service.url],
        stdout=terminal, stderr=subprocess.PIPE, env=cli_env(TERM="xterm", COLUMNS="100"),
    )  # fmt: skip
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's other end closed: the process is done writing
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert proc.wait(30) == OK
    text = output.decode()
    redraws = text.split("\r\x1b[K")
    assert len(redraws) > 5  # redrawn in place, once per change
    assert "100%" in redraws[-1] and "SUCCESS" in redraws[-1]
    assert 'result: {"slept": 0.4}' in text


def test_the_live_bar_fits_a_line_of_wide_characters_in_the_terminal(monkeypatch):
    # Each of these characters takes two columns: cut by characters, the line would wrap and
    # every redraw would leave a line behind.
    monkeypatch.setenv("COLUMNS", "60")
    out = io.StringIO()
    bar = LiveBar(out, io.StringIO())
    message = "処理中です" * 20
    bar.show({"task": "import", "id": "abc", "state": "PROGRESS", "seq": 3,
              "progress": {"percent": 40, "message": message}})  # fmt: skip
    line = out.getvalue().removeprefix("\r\x1b[K")
    wide = sum(1 for c in line if c in message)
    assert len(line) + wide <= 59, line
    assert "処理中" in line


# --- errors ----------------------------------------------------------------------------------


def test_bad_arguments_show_the_problem_detail(service):
    result = taskctl("submit", "sleep", "seconds=-1", "steps=0", url=service.url)
    assert result.returncode == USAGE
    assert "Invalid arguments (422)" in result.stderr
    assert re.search(r"^\s+- seconds: .*greater than or equal to 0", result.stderr, re.M)
    assert re.search(r"^\s+- steps: ", result.stderr, re.M)
    assert result.stdout == ""

    unknown = taskctl("submit", "nosuch", url=service.url)
    assert unknown.returncode == USAGE
    assert "Unknown task (404)" in unknown.stderr
    assert "add, fail, flaky, sleep" in unknown.stderr

    missing = taskctl("watch", "no-such-task", url=service.url)
    assert missing.returncode == USAGE
    assert "Task not found (404)" in missing.stderr


def test_bad_command_lines_exit_3(service):
    assert taskctl("submit", "add", "x", url=service.url).returncode == USAGE
    assert taskctl("submit", "add", "x=1", "x=2", url=service.url).returncode == USAGE
    assert taskctl("frobnicate", url=service.url).returncode == USAGE
    assert taskctl("status", url=service.url).returncode == USAGE
    assert taskctl("status", "x", url="ftp://nowhere").returncode == USAGE


def test_an_unreachable_service_exits_4():
    result = taskctl("status", "x", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == UNAVAILABLE
    assert "cannot reach" in result.stderr
    result = taskctl("watch", "x", "--patience", "1", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == UNAVAILABLE
    assert "gave up" in result.stderr


def test_a_service_that_never_answers_is_given_up_on_after_patience():
    # A server that takes the connection and never says a word (hung, or a dead proxy): watch
    # gives up about when --patience says, not after the stream's 45 s read timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = taskctl("watch", "abc", "--patience", "2", url=url)
        took = time.monotonic() - started
    assert result.returncode == UNAVAILABLE, result.stderr
    assert "gave up after 2s" in result.stderr
    assert took < 20, took


class _NotTheService:
    """An HTTP server that is not taskstream: a redirect to https, or an HTML page."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b""):
        import http.server

        answer = (status, headers, body)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, extra, payload = answer
                self.send_response(code)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_url_that_is_not_the_service_says_so_and_exits_4():
    redirect = _NotTheService(301, {"Location": "https://tasks.example/"})
    page = _NotTheService(200, {"Content-Type": "text/html"}, b"<html>sign in</html>")
    try:
        result = taskctl("status", "abc", url=redirect.url)
        assert result.returncode == UNAVAILABLE, result.stderr
        assert "a redirect to https://tasks.example/" in result.stderr
        assert "Traceback" not in result.stderr
        result = taskctl("watch", "abc", "--patience", "1", url=page.url)
        assert result.returncode == UNAVAILABLE, result.stderr
        assert "Traceback" not in result.stderr
        result = taskctl("status", "abc", url=page.url)
        assert "text/html, not the taskstream API" in result.stderr
    finally:
        redirect.close()
        page.close()


def test_what_cannot_be_sent_is_a_usage_error_not_a_traceback(service):
    for args in (("submit", "add", "x:=1e400", "y=1"), ("status", "x")):
        url = service.url if args[0] == "submit" else "http://127.0.0.1:notaport"
        result = taskctl(*args, url=url)
        assert result.returncode == USAGE, (args, result.stderr)
        assert "Traceback" not in result.stderr
    token = cli_env(TASKSTREAM_TOKEN="t\u00f6k\u00e9n")
    result = taskctl("status", "x", url=service.url, env=token)
    assert result.returncode == USAGE and "Traceback" not in result.stderr


def test_ids_of_dots_are_ids_not_paths(service):
    for task_id in (".", ".."):
        result = taskctl("status", task_id, url=service.url)
        assert result.returncode == USAGE, result.stdout
        assert "Task not found" in result.stderr


def test_a_password_in_the_url_is_never_printed():
    result = taskctl("status", "x", url=f"http://admin:s3cret@127.0.0.1:{free_port()}")
    assert result.returncode == UNAVAILABLE
    assert "s3cret" not in result.stderr and "***" in result.stderr


def test_task_text_cannot_drive_the_terminal(service):
    message = "ok\x1b[2J\x1b]0;pwned\x07"
    result = taskctl("submit", "fail", f"message={message}", "--follow", url=service.url)
    assert result.returncode == FAILURE
    assert "\x1b" not in result.stdout + result.stderr
    assert "\\x1b[2J" in result.stderr


def test_a_terminal_that_cannot_show_a_character_gets_an_escape(service):
    env = cli_env(PYTHONIOENCODING="ascii")
    result = taskctl("submit", "fail", "message=h\u00e9llo \u2713", "-f", url=service.url, env=env)
    assert result.returncode == FAILURE, result.stderr
    assert "Traceback" not in result.stderr and "h\\xe9llo" in result.stdout + result.stderr
