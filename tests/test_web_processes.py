"""WEB_CONCURRENCY web processes on one port, each serving in its main process: SIGTERM sent to
the main pid only (as kill, Docker, Kubernetes and supervisord send it) ends every open stream at
once, every process exits within a couple of seconds, and clients resume on another web."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from tests.harness import (
    Proc,
    assert_contiguous,
    children,
    free_port,
    read_stream,
    submit,
    wait_ready,
    web_command,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_to_the_main_pid_ends_every_stream_at_once_and_clients_resume(make_service):
    svc = make_service()
    svc.start_worker(concurrency=4)
    port = free_port()
    env = dict(svc.env, WEB_CONCURRENCY="2")
    main = Proc("web-pair", web_command("127.0.0.1", port), env, svc.log_dir).start()
    svc.webs.append(main)
    svc.ports.append(port)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, main)
    other = svc.start_web()  # where clients go once the pair is gone
    assert other
    pair = [main.pid, *children(main.pid)]
    assert len(pair) == 2, "WEB_CONCURRENCY=2 runs two processes"

    tasks = [submit(base, "sleep", seconds=10, steps=50)["id"] for _ in range(4)]
    got: dict[str, list[tuple[int, dict]]] = {t: [] for t in tasks}
    ended: dict[str, float] = {}

    def follow(task_id: str) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
            connect_sse(client, "GET", f"{base}/tasks/{task_id}/events?last_event_id=0") as source,
        ):
            for event in source.iter_sse():
                if event.data:
                    got[task_id].append((int(event.id), json.loads(event.data)))
        ended[task_id] = time.monotonic()

    # Several streams: the kernel spreads them over both processes of the port.
    threads = [threading.Thread(target=follow, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while not all(len(got[t]) >= 3 for t in tasks):
        assert time.monotonic() < deadline, "streams did not start"
        time.sleep(0.05)

    signalled = time.monotonic()
    os.kill(main.pid, signal.SIGTERM)  # the main pid only, not its group
    for t in threads:
        t.join(10)
    assert all(not t.is_alive() for t in threads)
    assert max(ended.values()) - signalled < 2.0, "streams did not end at once"
    main.popen.wait(5)
    exited = time.monotonic() - signalled
    assert exited < 3.0, f"the main process took {exited:.1f} s to exit"
    deadline = time.monotonic() + 3
    while any(alive(pid) for pid in pair[1:]):
        assert time.monotonic() < deadline, "a sibling web process outlived the main one"
        time.sleep(0.05)

    for task_id in tasks:
        seen = got[task_id]
        # Ended mid-task, not by finishing.
        assert seen[-1][1]["state"] != "SUCCESS"
        rest = read_stream(svc.url_of(1), task_id, headers={"Last-Event-ID": str(seen[-1][0])})
        assert_contiguous([i for i, _ in seen + rest], first=1)
        assert rest[-1][1]["state"] == "SUCCESS"


def test_a_second_server_on_a_port_in_use_refuses_to_start(make_service):
    # Every process binds with SO_REUSEPORT (the kernel spreads connections over a deployment's
    # own processes), which would also let a second `make run` bind beside the first and take
    # half its connections, unnoticed.
    svc = make_service()
    svc.start_web()
    second = subprocess.run(
        web_command("127.0.0.1", svc.ports[0]), env=svc.env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"127.0.0.1:{svc.ports[0]} is in use" in second.stderr
    assert httpx.get(f"{svc.url}/healthz").status_code == 200
