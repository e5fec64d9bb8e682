"""The proof over real sockets: a host Quart app served by Hypercorn with taskstream mounted at
`/jobs`, a real worker, the dashboard in Chromium, and a client that follows the links it is
given. And the standalone app behind a proxy's root path (`hypercorn --root-path /jobs`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse
from playwright import sync_api

from taskstream.client import Client
from tests.harness import (
    CHROMIUM_ARGS,
    TERMINAL,
    Proc,
    Service,
    assert_contiguous,
    free_port,
    require_chromium,
    wait_ready,
    web_command,
)
from tests.test_dashboard import row, submit_from_form, wait_for_state


def serve(svc: Service, name: str, cmd: list[str], port: int, ready_path: str) -> str:
    proc = Proc(name, cmd, svc.env, svc.log_dir).start()
    svc.webs.append(proc)
    svc.ports.append(port)
    wait_ready(f"http://127.0.0.1:{port}{ready_path}", proc)
    return f"http://127.0.0.1:{port}"


def serve_host(svc: Service) -> str:
    port = free_port()
    # --workers 0: served in Hypercorn's main process, which is the one SIGTERM reaches (with a
    # worker process, the signal stops at Hypercorn's supervisor and never reaches the app).
    cmd = [sys.executable, "-m", "hypercorn", "tests.embedded_host:app", "--workers", "0",
           "--bind", f"127.0.0.1:{port}", "--graceful-timeout", str(GRACEFUL)]  # fmt: skip
    return serve(svc, "host", cmd, port, "/jobs")


GRACEFUL = 8


@pytest.fixture(scope="module")
def embedded(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The host app's origin; taskstream is at /jobs of it."""
    svc = Service(redis_url, tmp_path_factory.mktemp("embedded"))
    try:
        svc.start_worker(concurrency=2)
        yield serve_host(svc)
    finally:
        svc.stop()


def follow_links(origin: str, snap: dict) -> list[tuple[int, dict]]:
    """What `curl -N "$origin$(jq -r .links.events)"` does: the URL exactly as the API gave it."""
    events = []
    with (
        httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
        connect_sse(client, "GET", origin + snap["links"]["events"]) as source,
    ):
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if sse.data:
                events.append((int(sse.id), json.loads(sse.data)))
                if events[-1][1]["state"] in TERMINAL:
                    return events
    return events


def test_the_host_serves_its_pages_and_the_api_under_jobs(embedded):
    assert httpx.get(embedded + "/").text.endswith('<a href="/jobs/">Jobs</a>')
    bare = httpx.get(embedded + "/jobs")
    assert (bare.status_code, bare.headers["location"]) == (308, "/jobs/")
    created = httpx.post(embedded + "/jobs/tasks", json={"task": "sleep", "kwargs": {
        "seconds": 0.6, "steps": 3}})  # fmt: skip
    assert created.status_code == 202
    snap = created.json()
    assert created.headers["location"] == snap["links"]["self"] == f"/jobs/tasks/{snap['id']}"

    events = follow_links(embedded, snap)
    assert_contiguous([i for i, _ in events])
    assert events[-1][1]["state"] == "SUCCESS"
    assert all(s["links"] == snap["links"] for _, s in events)
    assert httpx.get(embedded + snap["links"]["self"]).json()["state"] == "SUCCESS"


def test_the_client_library_works_against_the_mount(embedded):
    with Client(embedded + "/jobs") as client:
        snap = client.submit("sleep", seconds=0.4, steps=2)
        assert snap["links"]["self"] == f"/jobs/tasks/{snap['id']}"
        changes = list(client.follow(snap["id"], after=snap["seq"]))
    assert [s["seq"] for s in changes] == list(range(2, 2 + len(changes)))
    assert changes[-1]["state"] == "SUCCESS"


def test_the_dashboard_at_jobs_submits_and_shows_a_task_live(embedded):
    chromium = require_chromium()
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(embedded + "/jobs")  # as typed: redirected to /jobs/
            page.wait_for_selector("#submit-button:not([disabled])")
            page.wait_for_selector("#mode[data-mode=live]")
            task_id = submit_from_form(page, "sleep", seconds=1.5, steps=3)
            page.wait_for_selector(f'li.task[data-task-id="{task_id}"][data-state="PROGRESS"]')
            assert wait_for_state(page, task_id, TERMINAL) == "SUCCESS"
            assert '{"slept":1.5}' in row(page, task_id).locator(".result").inner_text()
        finally:
            browser.close()
    assert not errors, errors
    # After the typed address, everything the page loaded (assets, the API, the stream) was
    # under the mount.
    assert requests[0] == embedded + "/jobs"
    assert all(url.startswith(embedded + "/jobs/") for url in requests[1:]), requests
    assert any("/jobs/events" in url for url in requests), requests


def test_sigterm_to_the_host_ends_the_mounted_streams_at_once(redis_url, tmp_path):
    # Without a worker: the task stays PENDING, so only the shutdown can end its stream.
    svc = Service(redis_url, tmp_path)
    try:
        origin = serve_host(svc)
        snap = httpx.post(origin + "/jobs/tasks", json={"task": "add", "args": [1, 2]}).json()
        with (
            httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
            connect_sse(client, "GET", origin + snap["links"]["events"]) as source,
        ):
            events = source.iter_sse()
            assert json.loads(next(e for e in events if e.data).data)["seq"] == 1
            os.kill(svc.webs[0].pid, signal.SIGTERM)  # the main pid, as an orchestrator does
            began = time.monotonic()
            assert [e for e in events if e.data] == []  # the stream ends, nothing more sent
            ended = time.monotonic() - began
        svc.webs[0].popen.wait(GRACEFUL)
        # Well before Hypercorn's graceful timeout, which an open stream would have used up.
        assert ended < GRACEFUL / 2, ended
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def behind_proxy(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The standalone server (as the Procfile starts it) with ROOT_PATH, as a proxy that
    forwards /jobs/... unchanged would reach it."""
    env = {"ROOT_PATH": "/jobs", "WEB_CONCURRENCY": "1"}
    svc = Service(redis_url, tmp_path_factory.mktemp("rootpath"), extra_env=env)
    try:
        svc.start_worker(concurrency=2)
        port = free_port()
        yield serve(svc, "web-rootpath", web_command("127.0.0.1", port), port, "/jobs")
    finally:
        svc.stop()


def test_a_proxy_root_path_writes_every_link_under_it(behind_proxy):
    created = httpx.post(behind_proxy + "/jobs/tasks", json={"task": "add", "args": [2, 3]})
    assert created.status_code == 202
    snap = created.json()
    assert created.headers["location"] == snap["links"]["self"] == f"/jobs/tasks/{snap['id']}"
    events = follow_links(behind_proxy, snap)
    assert events[-1][1]["result"] == 5
    assert httpx.get(behind_proxy + "/jobs/openapi.json").json()["servers"] == [{"url": "/jobs"}]
    missing = httpx.get(behind_proxy + "/jobs/tasks/nope").json()
    assert missing["type"] == "/jobs/problems/task-not-found"
    page = httpx.get(behind_proxy + "/jobs/")
    assert page.status_code == 200 and 'href="static/dashboard.css"' in page.text
    assert httpx.get(behind_proxy + "/jobs/static/dashboard/main.js").status_code == 200
