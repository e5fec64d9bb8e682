"""Session cookies and stream tokens are bound to the token they came from, end at logout, and
cannot be renewed past their end without the token (issue 10, items 2 and 5)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.harness import (
    CHROMIUM_ARGS,
    Service,
    accept_directly,
    direct_recorder,
    new_prefix,
    require_chromium,
)

KEY = "first-secret-key-" + "k" * 32
NEW_KEY = "second-secret-key-" + "n" * 32


def token(name: str, version: int = 1) -> str:
    return f"{name}-token-v{version}-" + "t" * 32


def tokens_env(*entries: str) -> str:
    return ",".join(entries)


def sign_in(base: str, bearer: str) -> dict[str, str]:
    answer = httpx.post(f"{base}/session", headers={"Authorization": f"Bearer {bearer}"})
    assert answer.status_code == 200, answer.text
    return {"taskstream_session": answer.cookies["taskstream_session"]}


def stream_token(base: str, task_id: str, cookies: dict[str, str]) -> str:
    answer = httpx.post(f"{base}/tasks/{task_id}/stream-token", cookies=cookies)
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def opens(base: str, task_id: str, stream_token: str) -> int:
    with httpx.stream("GET", f"{base}/tasks/{task_id}/events?token={stream_token}",
                      timeout=10) as response:  # fmt: skip
        return response.status_code


def status(base: str, cookies: dict[str, str]) -> int:
    return httpx.get(f"{base}/tasks", cookies=cookies).status_code


def test_cookies_and_stream_tokens_end_with_the_token_they_came_from(make_service):
    svc: Service = make_service(
        API_TOKENS=tokens_env(
            f"alice:{token('alice')}",
            f"carol:{token('carol')}",
            f"ops:{token('ops')}:admin",
            f"bob:{token('bob')}",
        ),
        SECRET_KEY=KEY,
    )
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)  # an admin-visible, ownerless task nobody runs
    try:
        cookies = {name: sign_in(svc.url, token(name)) for name in ("alice", "carol", "ops", "bob")}
        ops_stream = stream_token(svc.url, task_id, cookies["ops"])
        assert all(status(svc.url, jar) == 200 for jar in cookies.values())
        assert opens(svc.url, task_id, ops_stream) == 200

        # Alice's token is rotated, Carol's removed, Ops demoted; Bob's stays as it was.
        svc.extra_env["API_TOKENS"] = tokens_env(
            f"alice:{token('alice', 2)}", f"ops:{token('ops')}", f"bob:{token('bob')}"
        )
        svc.restart_web()
        for name in ("alice", "carol", "ops"):
            answer = httpx.get(f"{svc.url}/tasks", cookies=cookies[name])
            assert answer.status_code == 401, name
            assert answer.json()["type"] == "/problems/unauthorized"
            # Renewing with the cookie alone does not bring it back either.
            assert httpx.post(f"{svc.url}/session", cookies=cookies[name]).status_code == 401
        assert opens(svc.url, task_id, ops_stream) == 401
        assert status(svc.url, cookies["bob"]) == 200
        assert status(svc.url, sign_in(svc.url, token("alice", 2))) == 200

        # SECRET_KEY rotated with the old key kept for verification: nobody is signed out...
        svc.extra_env.update(SECRET_KEY=NEW_KEY, PREVIOUS_SECRET_KEYS=KEY)
        svc.restart_web()
        assert status(svc.url, cookies["bob"]) == 200
        renewed = httpx.post(f"{svc.url}/session", cookies=cookies["bob"])
        assert renewed.status_code == 200
        bob_renewed = {"taskstream_session": renewed.cookies["taskstream_session"]}
        # ...and once the old key is dropped, only what the new key signed holds.
        del svc.extra_env["PREVIOUS_SECRET_KEYS"]
        svc.restart_web()
        assert status(svc.url, cookies["bob"]) == 401
        assert status(svc.url, bob_renewed) == 200
    finally:
        recorder.client.close()


def test_logout_revokes_the_cookie_and_the_stream_tokens_it_issued(make_service):
    svc: Service = make_service(API_TOKENS=tokens_env(f"ops:{token('ops')}:admin"), SECRET_KEY=KEY)
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    try:
        kept = sign_in(svc.url, token("ops"))
        ended = sign_in(svc.url, token("ops"))
        issued = stream_token(svc.url, task_id, ended)
        assert opens(svc.url, task_id, issued) == 200
        assert httpx.delete(f"{svc.url}/session", cookies=ended).status_code == 204
        # A copy of the cookie kept by someone (or the browser's, not cleared) is refused.
        assert status(svc.url, ended) == 401
        refused = httpx.get(f"{svc.url}/tasks", cookies=ended)
        assert refused.headers["www-authenticate"] == (
            'Bearer realm="taskstream", error="invalid_token"'
        )
        assert httpx.post(f"{svc.url}/session", cookies=ended).status_code == 401
        assert opens(svc.url, task_id, issued) == 401
        # Nor does it read the metrics, which admins' sessions may.
        assert httpx.get(f"{svc.url}/metrics", cookies=kept).status_code == 200
        assert httpx.get(f"{svc.url}/metrics", cookies=ended).status_code == 401
        # Another session of the same caller is untouched.
        assert status(svc.url, kept) == 200
        # The revocation lasts as long as the cookie would have, no longer.
        ttl = recorder.client.ttl(f"{svc.prefix}:revoked-session:" + _session_id(ended))
        assert 0 < ttl <= 8 * 3600 + 1
    finally:
        recorder.client.close()


def _session_id(cookies: dict[str, str]) -> str:
    from itsdangerous import URLSafeSerializer

    claims = URLSafeSerializer(KEY, salt="taskstream.session").loads(cookies["taskstream_session"])
    return claims["s"]


async def test_renewing_with_the_cookie_alone_never_moves_its_end(make_app):
    from taskstream.web.services import services

    ops = token("ops")
    app = await make_app(api_tokens=f"ops:{ops}:admin", secret_key=KEY, session_seconds=3600)
    now = [5_000_000.0]
    async with app.app_context():
        services().clock = lambda: now[0]
    client = app.test_client()

    def jar(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        return {"Cookie": cookie}

    signed_in = await client.post("/session", headers={"Authorization": f"Bearer {ops}"})
    cookie = jar(signed_in)
    assert "Max-Age=3600" in signed_in.headers["Set-Cookie"]
    for _ in range(5):  # renewing every ten minutes, as a page might
        now[0] += 600
        renewed = await client.post("/session", headers=cookie)
        assert renewed.status_code == 200
        cookie = jar(renewed)
    assert "Max-Age=600" in renewed.headers["Set-Cookie"]  # what is left of the hour
    assert (await client.get("/tasks", headers=cookie)).status_code == 200
    now[0] += 601
    assert (await client.get("/tasks", headers=cookie)).status_code == 401
    assert (await client.post("/session", headers=cookie)).status_code == 401
    # The token itself signs in again, for a new hour.
    again = await client.post("/session", headers={"Authorization": f"Bearer {ops}"})
    assert "Max-Age=3600" in again.headers["Set-Cookie"]


async def test_hostile_stream_tokens_are_401_not_500(make_app):
    ops = token("ops")
    app = await make_app(api_tokens=f"ops:{ops}:admin", secret_key=KEY)
    client = app.test_client()
    for hostile in ("a.%C3%A9", "%C3%A9.%C3%A9", "x" * 5000, ".", "..", "a.b.c", "%00.%FF"):
        answer = await client.get(f"/tasks/some-task/events?token={hostile}")
        assert answer.status_code == 401, (hostile, answer.status_code)
    answer = await client.get("/tasks", headers={"Cookie": "taskstream_session=a.%C3%A9"})
    assert answer.status_code == 401


async def test_a_stream_token_ends_after_stream_token_seconds(make_app, redis_url):
    from taskstream.web.services import services

    ops = token("ops")
    prefix = new_prefix()
    app = await make_app(api_tokens=f"ops:{ops}:admin", secret_key=KEY, key_prefix=prefix,
                         stream_token_seconds=300)  # fmt: skip
    now = [5_000_000.0]
    async with app.app_context():
        services().clock = lambda: now[0]
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {ops}"}
    recorder = direct_recorder(Service(redis_url, Path("."), prefix=prefix))
    try:
        task_id = accept_directly(recorder)
    finally:
        recorder.client.close()
    granted = await client.post(f"/tasks/{task_id}/stream-token", headers=bearer)
    assert granted.status_code == 200
    events = (await granted.get_json())["events"]
    # Ended (REVOKED, seq 2) and already seen: the stream answers 204 at once when the token holds.
    assert (await client.delete(f"/tasks/{task_id}", headers=bearer)).status_code == 202
    seen = {"Last-Event-ID": "2"}
    now[0] += 299
    assert (await client.get(events, headers=seen)).status_code == 204
    now[0] += 1
    expired = await client.get(events, headers=seen)
    assert expired.status_code == 401
    assert (await expired.get_json())["type"] == "/problems/unauthorized"


class _OpenStream:
    """A stream held open in a thread of its own: its status and whether (and when) it ended."""

    def __init__(self, url: str, cookies: dict[str, str] | None = None):
        self.status = 0
        self.ended_at: float | None = None
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, cookies or {}), daemon=True)
        self._thread.start()
        assert self._opened.wait(10), url

    def _read(self, url: str, cookies: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, cookies=cookies, timeout=60) as response:
                self.status = response.status_code
                self._opened.set()
                for _ in response.iter_raw():
                    pass
        except httpx.HTTPError:
            pass
        finally:
            self._opened.set()
            self.ended_at = time.monotonic()

    def ended_within(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return self.ended_at is not None


def test_open_streams_end_when_their_session_is_revoked_on_every_process(make_service):
    svc: Service = make_service(API_TOKENS=tokens_env(f"ops:{token('ops')}:admin"), SECRET_KEY=KEY)
    svc.start_web()
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)  # stays PENDING: its stream would run until it ends
    try:
        ended = sign_in(svc.url, token("ops"))
        kept = sign_in(svc.url, token("ops"))
        issued = stream_token(svc.url, task_id, ended)
        doomed = [
            _OpenStream(f"{svc.url_of(0)}/events", ended),
            _OpenStream(f"{svc.url_of(1)}/events", ended),
            _OpenStream(f"{svc.url_of(1)}/tasks/{task_id}/events", ended),
            _OpenStream(f"{svc.url_of(1)}/tasks/{task_id}/events?token={issued}"),
        ]
        others = [
            _OpenStream(f"{svc.url_of(1)}/events", kept),
            _OpenStream(f"{svc.url_of(0)}/tasks/{task_id}/events", kept),
        ]
        assert [s.status for s in doomed + others] == [200] * 6
        assert httpx.delete(f"{svc.url_of(0)}/session", cookies=ended).status_code == 204
        # Logged out, the session's streams end on both processes (the one that took the
        # logout at once, the other within seconds); its other session's streams go on.
        for stream in doomed:
            assert stream.ended_within(8)
        assert not any(s.ended_within(0.5) for s in others)
    finally:
        recorder.client.close()


def test_open_streams_end_when_their_session_ends(make_service):
    svc: Service = make_service(
        API_TOKENS=tokens_env(f"ops:{token('ops')}:admin"), SECRET_KEY=KEY, SESSION_SECONDS="3"
    )
    svc.start_web()
    recorder = direct_recorder(svc)
    task_id = accept_directly(recorder)
    try:
        cookies = sign_in(svc.url, token("ops"))
        started = time.monotonic()
        streams = [
            _OpenStream(f"{svc.url}/events", cookies),
            _OpenStream(f"{svc.url}/tasks/{task_id}/events", cookies),
        ]
        bearer = {"Authorization": f"Bearer {token('ops')}"}
        with httpx.stream("GET", f"{svc.url}/events", headers=bearer, timeout=30) as by_token:
            assert by_token.status_code == 200
            for stream in streams:
                assert stream.status == 200
                assert stream.ended_within(8)
                assert stream.ended_at is not None and stream.ended_at - started >= 2.5
            # A stream opened with the bearer token has no session to end with.
            assert not by_token.is_closed
            assert status(svc.url, cookies) == 401
    finally:
        recorder.client.close()


def test_the_dashboard_goes_back_to_sign_in_when_its_session_ends(make_service):
    from playwright.sync_api import sync_playwright

    svc: Service = make_service(
        API_TOKENS=tokens_env(f"ops:{token('ops')}:admin"), SECRET_KEY=KEY, SESSION_SECONDS="8"
    )
    svc.start_web()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(svc.url + "/")
            page.fill("#signin-token", token("ops"))
            page.click("#signin button")
            page.wait_for_selector("#mode[data-mode=live]")
            # Its stream ends with the session, and the page asks for the token again.
            page.wait_for_selector("#signin:not([hidden])", timeout=25_000)
        finally:
            browser.close()
