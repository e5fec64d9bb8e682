"""Security with authentication on: tokens, ownership, sessions, stream tokens, CORS, limits."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from httpx_sse import connect_sse

from tests.harness import CHROMIUM_ARGS, Service, require_chromium

# Tokens of 32+ characters: shorter ones are refused at start.
TOKENS = {
    "alice": "alice-token-1-0123456789abcdef0123",
    "bob": "bob-token-22-0123456789abcdef01234",
    "ops": "ops-admin-333-0123456789abcdef0123",
    "flood": "flood-token-4444-0123456789abcdef01",
}
GOOD_ORIGIN = "https://good.example"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture(scope="module")
def secure(redis_url, tmp_path_factory):
    svc = Service(
        redis_url,
        tmp_path_factory.mktemp("secure"),
        extra_env={
            "API_TOKENS": ",".join(
                f"{name}:{token}" + (":admin" if name == "ops" else "")
                for name, token in TOKENS.items()
            ),
            "SECRET_KEY": "a-test-secret-key-of-some-length",
            "CORS_ORIGINS": GOOD_ORIGIN,
            "RATE_LIMIT_PER_MINUTE": "5",
            "RATE_LIMIT_WINDOW_SECONDS": "3",
            "MAX_STREAMS_PER_CALLER": "2",
            "MAX_ARGS_BYTES": "200",
        },
    )
    with svc.running(concurrency=2):
        yield svc


def submit_as(svc: Service, name: str, task: str, **kwargs: object) -> dict:
    response = httpx.post(f"{svc.url}/tasks", json={"task": task, "kwargs": kwargs},
                          headers=auth(name))  # fmt: skip
    assert response.status_code == 202, response.text
    return response.json()


def test_every_api_route_needs_a_valid_token(secure):
    for method, path in [("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/events"),
                         ("GET", "/task-types"), ("GET", "/tasks/x"), ("DELETE", "/tasks/x"),
                         ("GET", "/metrics"), ("GET", "/openapi.json")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer forged-token"},
                        {"Authorization": f"Basic {TOKENS['alice']}"}):  # fmt: skip
            response = httpx.request(method, secure.url + path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers)
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="taskstream"')
            # RFC 6750 3.1: a bearer token that is not valid is named so; a request without
            # one (or with another scheme) gets the bare challenge.
            forged = headers.get("Authorization", "").startswith("Bearer ")
            assert ('error="invalid_token"' in challenge) == forged, (challenge, headers)
            assert response.headers["content-type"] == "application/problem+json"
    for path in ("/healthz", "/readyz", "/", "/docs"):
        assert httpx.get(secure.url + path).status_code == 200
    # The API's description names the deployment's submittable tasks and their arguments, as
    # GET /task-types does: for callers only.
    document = httpx.get(f"{secure.url}/openapi.json", headers=auth("bob"))
    assert document.status_code == 200 and "paths" in document.json()


def test_a_task_belongs_to_its_submitter(secure):
    mine = submit_as(secure, "alice", "sleep", seconds=0.5, steps=2)
    url = f"{secure.url}/tasks/{mine['id']}"
    assert httpx.get(url, headers=auth("alice")).status_code == 200
    assert httpx.get(url, headers=auth("ops")).status_code == 200  # an admin sees all
    for response in (
        httpx.get(url, headers=auth("bob")),
        httpx.get(f"{url}/events", headers=auth("bob")),
        httpx.delete(url, headers=auth("bob")),
        httpx.post(f"{url}/stream-token", headers=auth("bob")),
    ):
        assert response.status_code == 404
    listed = httpx.get(f"{secure.url}/tasks", headers=auth("bob")).json()["items"]
    assert mine["id"] not in [t["id"] for t in listed]
    listed = httpx.get(f"{secure.url}/tasks", headers=auth("alice")).json()["items"]
    assert mine["id"] in [t["id"] for t in listed]
    # Bob's cancel changed nothing.
    done = httpx.get(url, headers=auth("alice")).json()
    assert done["state"] != "REVOKED"


def test_the_global_stream_shows_a_caller_only_its_own_tasks(secure):
    seen: dict[str, set[str]] = {"alice": set(), "bob": set()}

    def watch(name: str) -> None:
        try:
            follow(name)
        except httpx.ReadTimeout:  # quiet after the tasks ended: done watching
            pass

    def follow(name: str) -> None:
        with (
            httpx.Client(timeout=5, headers=auth(name)) as client,
            connect_sse(client, "GET", f"{secure.url}/events") as source,
        ):
            started.release()
            deadline = time.monotonic() + 4
            for sse in source.iter_sse():
                if sse.event == "message" and sse.data:
                    seen[name].add(json.loads(sse.data)["id"])
                if time.monotonic() > deadline:
                    return

    started = threading.Semaphore(0)
    threads = [threading.Thread(target=watch, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    started.acquire()
    started.acquire()
    alices = submit_as(secure, "alice", "sleep", seconds=2, steps=8)["id"]
    bobs = submit_as(secure, "bob", "sleep", seconds=2, steps=8)["id"]
    for t in threads:
        t.join(20)
    assert alices in seen["alice"] and bobs not in seen["alice"]
    assert bobs in seen["bob"] and alices not in seen["bob"]


def test_stream_tokens_open_one_task_for_a_short_while(secure):
    a = submit_as(secure, "alice", "sleep", seconds=0.2, steps=1)
    b = submit_as(secure, "alice", "sleep", seconds=0.2, steps=1)
    granted = httpx.post(f"{secure.url}/tasks/{a['id']}/stream-token", headers=auth("alice"))
    assert granted.status_code == 200
    token = granted.json()["token"]
    assert granted.json()["events"] == f"/tasks/{a['id']}/events?token={token}"
    with httpx.stream("GET", secure.url + granted.json()["events"]) as response:
        assert response.status_code == 200
    assert httpx.get(f"{secure.url}/tasks/{b['id']}/events?token={token}").status_code == 401
    assert httpx.get(f"{secure.url}/tasks/{a['id']}?token={token}").status_code == 401
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert httpx.get(f"{secure.url}/tasks/{a['id']}/events?token={tampered}").status_code == 401
    # Its end after STREAM_TOKEN_SECONDS is proven on an injected clock in test_sessions.py.


def test_a_session_cookie_for_browsers(secure):
    response = httpx.post(f"{secure.url}/session", headers=auth("alice"))
    assert response.status_code == 200
    assert response.json() == {"name": "alice", "admin": False}
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = response.cookies["taskstream_session"]
    jar = {"taskstream_session": value}
    assert httpx.get(f"{secure.url}/tasks", cookies=jar).status_code == 200
    forged = {"taskstream_session": value[:-2] + "xx"}
    assert httpx.get(f"{secure.url}/tasks", cookies=forged).status_code == 401


def test_cors_allows_listed_origins_only(secure):
    preflight = httpx.options(f"{secure.url}/tasks", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-origin"] == GOOD_ORIGIN
    evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert httpx.options(f"{secure.url}/tasks", headers=evil).status_code == 403

    before = httpx.get(f"{secure.url}/tasks", headers=auth("alice")).json()["items"]
    refused = httpx.post(f"{secure.url}/tasks", json={"task": "add", "args": [1, 2]},
                         headers={**auth("alice"), "Origin": "https://evil.example"})  # fmt: skip
    assert refused.status_code == 403
    assert httpx.get(f"{secure.url}/tasks", headers=auth("alice")).json()["items"] == before
    allowed = httpx.post(f"{secure.url}/tasks", json={"task": "add", "args": [1, 2]},
                         headers={**auth("alice"), "Origin": GOOD_ORIGIN})  # fmt: skip
    assert allowed.status_code == 202
    assert allowed.headers["access-control-allow-origin"] == GOOD_ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"


def test_a_preflight_answer_describes_no_body(secure):
    preflight = httpx.options(f"{secure.url}/tasks", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "DELETE"})  # fmt: skip
    assert (preflight.status_code, preflight.content) == (204, b"")
    # RFC 9110 §15.3.5: a 204 has no content, so nothing describes one.
    assert "content-type" not in preflight.headers
    assert "content-length" not in preflight.headers


def test_with_cors_on_every_answer_varies_by_origin(secure):
    # The answer to an allowed origin carries Access-Control-Allow-Origin and others do not: a
    # cache that kept one without `Vary: Origin` would give it to the other.
    for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": GOOD_ORIGIN}):
        for path in ("/tasks", "/healthz", "/nowhere"):
            response = httpx.get(secure.url + path, headers={**auth("alice"), **headers})
            vary = [v.strip().lower() for v in response.headers.get("vary", "").split(",")]
            assert vary.count("origin") == 1, (path, headers, response.headers.get("vary"))


def test_a_malformed_origin_is_a_foreign_one_not_a_500(secure):
    for origin in ("http://[", "http://[zz]", "http://[::1", "http://[::1]:x"):
        assert httpx.get(f"{secure.url}/healthz", headers={"Origin": origin}).status_code == 200
        refused = httpx.post(f"{secure.url}/tasks", json={"task": "add", "args": [1, 2]},
                             headers={**auth("alice"), "Origin": origin})  # fmt: skip
        assert refused.status_code == 403, (origin, refused.text)
        assert refused.json()["type"] == "/problems/origin-not-allowed"
        preflight = httpx.options(f"{secure.url}/tasks", headers={"Origin": origin})
        assert preflight.status_code == 403


# The submission limit (windows on an injected clock) is proven in test_rate_limit.py.


def test_a_flood_of_streams_is_limited_per_caller(secure):
    task = submit_as(secure, "bob", "sleep", seconds=3, steps=3)
    url = f"{secure.url}/tasks/{task['id']}/events"
    with httpx.Client(headers=auth("bob"), timeout=10) as client:
        first = client.send(client.build_request("GET", url), stream=True)
        second = client.send(client.build_request("GET", url), stream=True)
        assert first.status_code == second.status_code == 200
        third = client.get(url)
        assert third.status_code == 429
        assert third.headers["retry-after"]
        first.close()
        time.sleep(0.3)
        fourth = client.send(client.build_request("GET", url), stream=True)
        assert fourth.status_code == 200
        fourth.close()
        second.close()


def test_oversize_arguments_are_refused(secure):
    response = httpx.post(f"{secure.url}/tasks", headers=auth("alice"),
                          json={"task": "fail", "kwargs": {"message": "x" * 500}})  # fmt: skip
    assert response.status_code == 413
    assert response.json()["type"] == "/problems/arguments-too-large"


def test_the_cli_sends_its_token_from_the_environment(secure):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TASKSTREAM_URL": secure.url, "TASKSTREAM_TOKEN": TOKENS["alice"]}
    command = [sys.executable, "-m", "taskctl", "submit", "add", "x=2", "y=3", "--follow"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    env["TASKSTREAM_TOKEN"] = "not-a-token"
    refused = subprocess.run([sys.executable, "-m", "taskctl", "list"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 3
    assert "401" in refused.stderr


def test_the_dashboard_signs_in_with_a_token_and_shows_only_the_callers_tasks(secure):
    from playwright.sync_api import sync_playwright

    bobs = submit_as(secure, "bob", "add", x=1, y=1)["id"]
    alices = submit_as(secure, "alice", "sleep", seconds=0.5, steps=2)["id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            # The API's description is for callers: the page says where to sign in.
            page.goto(secure.url + "/docs")
            page.wait_for_selector("#description a[href='./']")
            page.goto(secure.url + "/")
            page.fill("#signin-token", "wrong-token-123")
            page.click("#signin button")
            page.wait_for_selector("#signin-error:not([hidden])")
            page.fill("#signin-token", TOKENS["alice"])
            page.click("#signin button")
            page.wait_for_selector("#submit-button:not([disabled])")
            page.wait_for_selector("#mode[data-mode=live]")
            page.wait_for_selector(f'li.task[data-task-id="{alices}"]')
            assert page.locator(f'li.task[data-task-id="{bobs}"]').count() == 0
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["taskstream_session"]["httpOnly"] is True
            assert page.inner_text("#account-name") == "Signed in as alice"
            # Signed in, the session cookie reads it.
            page.goto(secure.url + "/docs")
            page.wait_for_selector("#main section h2")
            # Signing out ends the session: the page asks for a token again, and shows nothing
            # of the dashboard behind the form.
            page.goto(secure.url + "/")
            page.click("#signout")
            page.wait_for_selector("#signin:not([hidden])")
            assert page.locator("main").is_hidden() and page.locator("#counts").is_hidden()
            session = {"taskstream_session": cookies["taskstream_session"]["value"]}
            assert httpx.get(f"{secure.url}/tasks", cookies=session).status_code == 401
        finally:
            browser.close()


def test_without_authentication_only_the_per_process_stream_bound_holds(make_service):
    # One local user (or a benchmark's thousands of streams from one address) is not a "caller"
    # to limit; the process still bounds its streams.
    svc = make_service(MAX_STREAMS_PER_CALLER="2", MAX_STREAMS_PER_PROCESS="3")
    svc.start_web()
    task = httpx.post(f"{svc.url}/tasks", json={"task": "sleep", "kwargs": {"seconds": 60}}).json()
    url = f"{svc.url}/tasks/{task['id']}/events"
    with httpx.Client(timeout=10) as client:
        streams = [client.send(client.build_request("GET", url), stream=True) for _ in range(3)]
        assert [s.status_code for s in streams] == [200, 200, 200]
        refused = client.get(url)
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        for stream in streams:
            stream.close()
