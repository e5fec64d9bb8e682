"""taskstream inside another Quart app at `/jobs`, and behind a proxy's root path: every URL the
API writes points back under the prefix. In-process (ASGI, no socket); the same through a real
Hypercorn and Chromium is in test_mount_served.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart

from taskstream.settings import Settings
from taskstream.web import mount
from taskstream.web.app import create_app
from taskstream.web.embed import PrefixDispatcher, clean_prefix
from tests.harness import new_prefix


def settings(redis_url: str) -> Settings:
    return Settings.from_env(redis_url=redis_url, key_prefix=new_prefix())


def host_app() -> Quart:
    host = Quart("host")

    @host.get("/")
    async def home() -> str:
        return "the host's own page"

    @host.get("/jobs-report")
    async def report() -> str:
        # Starts like the prefix but is not under it: stays the host's.
        return "host report"

    return host


@pytest.fixture
async def mounted(redis_url: str) -> AsyncIterator[Any]:
    host = host_app()
    jobs = mount(host, "/jobs/", settings(redis_url))
    async with host.test_app() as test_app:
        assert await jobs.extensions["taskstream"].hub.wait_live(5)
        yield test_app.test_client()


async def first_event(client: Any, path: str, **kwargs: Any) -> dict:
    async with client.request(path, **kwargs) as connection:
        await connection.send_complete()
        while True:
            chunk = (await connection.receive()).decode()
            for line in chunk.splitlines():
                if line.startswith("data: "):
                    await connection.disconnect()
                    return json.loads(line[len("data: ") :])


def assert_links_under(snap: dict, root: str) -> None:
    task = f"{root}/tasks/{snap['id']}"
    assert snap["links"] == {"self": task, "events": f"{task}/events"}


async def test_the_api_answers_under_the_prefix_with_links_under_it(mounted):
    created = await mounted.post("/jobs/tasks", json={"task": "add", "args": [1, 2]})
    assert created.status_code == 202
    snap = await created.get_json()
    assert created.headers["Location"] == f"/jobs/tasks/{snap['id']}"
    assert_links_under(snap, "/jobs")

    polled = await mounted.get(snap["links"]["self"])
    assert_links_under(await polled.get_json(), "/jobs")
    listed = await (await mounted.get("/jobs/tasks")).get_json()
    assert_links_under(next(s for s in listed["items"] if s["id"] == snap["id"]), "/jobs")
    # The stream's snapshots carry the same links: a client follows `links.events` as given.
    assert_links_under(await first_event(mounted, snap["links"]["events"]), "/jobs")

    token = await (await mounted.post(f"/jobs/tasks/{snap['id']}/stream-token")).get_json()
    assert token["events"] == snap["links"]["events"]


async def test_problems_docs_and_pages_are_under_the_prefix(mounted):
    missing = await mounted.get("/jobs/tasks/nope")
    assert missing.status_code == 404
    assert (await missing.get_json())["type"] == "/jobs/problems/task-not-found"

    document = await (await mounted.get("/jobs/openapi.json")).get_json()
    assert document["servers"] == [{"url": "/jobs"}]
    assert "/tasks/{task_id}" in document["paths"]

    docs = await mounted.get("/jobs/docs")
    assert docs.status_code == 200
    assert '<script src="static/docs.js">' in await docs.get_data(as_text=True)
    script = await mounted.get("/jobs/static/docs.js")
    assert 'fetch("openapi.json")' in await script.get_data(as_text=True)
    assert (await mounted.get("/jobs/")).status_code == 200
    assert (await mounted.get("/jobs/static/dashboard.css")).status_code == 200

    # The prefix alone redirects to the dashboard, where the page's relative links resolve.
    bare = await mounted.get("/jobs", query_string={"poll": "1"})
    assert bare.status_code == 308
    assert bare.headers["Location"] == "/jobs/?poll=1"


async def test_the_host_keeps_its_own_routes(mounted):
    assert await (await mounted.get("/")).get_data(as_text=True) == "the host's own page"
    assert await (await mounted.get("/jobs-report")).get_data(as_text=True) == "host report"
    # Not the API's problem documents: the host answers its own 404s.
    assert (await mounted.get("/tasks")).status_code == 404


async def test_a_proxy_root_path_is_honoured(redis_url):
    # What `hypercorn --root-path /jobs` does: root_path set, the full path kept.
    app = create_app(settings(redis_url))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        created = await client.post(
            "/jobs/tasks", json={"task": "add", "args": [1, 2]}, root_path="/jobs"
        )
        assert created.status_code == 202, await created.get_data(as_text=True)
        snap = await created.get_json()
        assert created.headers["Location"] == f"/jobs/tasks/{snap['id']}"
        assert_links_under(snap, "/jobs")
        document = await (await client.get("/jobs/openapi.json", root_path="/jobs")).get_json()
        assert document["servers"] == [{"url": "/jobs"}]
        bare = await client.get("/jobs", root_path="/jobs")
        assert (bare.status_code, bare.headers["Location"]) == (308, "/jobs/")
        # Served without a root path, the same app writes plain links.
        direct = await (await client.get(snap["links"]["self"][len("/jobs") :])).get_json()
        assert_links_under(direct, "")
        document = await (await client.get("/openapi.json")).get_json()
        assert document["servers"] == [{"url": "/"}]


@pytest.mark.parametrize("trusted", [True, False])
async def test_x_forwarded_prefix_only_from_a_trusted_proxy(redis_url, trusted):
    # A proxy that strips /jobs and says so: the app sees /tasks, and writes /jobs/tasks.
    app = create_app(settings(redis_url).model_copy(update={"trust_forwarded_prefix": trusted}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        forwarded = {"X-Forwarded-Prefix": "/jobs/"}
        created = await client.post(
            "/tasks", json={"task": "add", "args": [1, 2]}, headers=forwarded
        )
        snap = await created.get_json()
        root = "/jobs" if trusted else ""
        assert created.headers["Location"] == f"{root}/tasks/{snap['id']}"
        assert_links_under(snap, root)
        document = await (await client.get("/openapi.json", headers=forwarded)).get_json()
        assert document["servers"] == [{"url": root or "/"}]
        # Not a path: ignored, as if the proxy had sent nothing.
        for junk in ("jobs", "/a?b", "/", "/a b"):
            odd = await client.get(f"/tasks/{snap['id']}", headers={"X-Forwarded-Prefix": junk})
            assert_links_under(await odd.get_json(), "")


async def test_a_mount_inside_a_host_under_a_root_path():
    seen: list[dict] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope)

    async def host(scope: dict, receive: Any, send: Any) -> None:
        seen.append({"host": scope["path"]})

    dispatch = PrefixDispatcher(host, "/jobs", app)
    base = {"type": "http", "root_path": "/outer"}
    await dispatch({**base, "path": "/outer/jobs/tasks"}, None, None)
    await dispatch({**base, "path": "/outer/jobsx"}, None, None)
    await dispatch({"type": "lifespan"} | {"path": "", "root_path": ""}, None, None)
    assert seen[0]["root_path"] == "/outer/jobs"
    assert seen[0]["path"] == "/outer/jobs/tasks"
    assert seen[1] == {"host": "/outer/jobsx"}
    assert seen[2] == {"host": ""}


@pytest.mark.parametrize("bad", ["/", "", "//", "/a?b", "/a#b", "/a//b"])
def test_a_prefix_must_be_a_path(bad):
    with pytest.raises(ValueError, match="mount prefix"):
        clean_prefix(bad)


def test_a_prefix_is_cleaned():
    assert clean_prefix("jobs/") == "/jobs"
    assert clean_prefix("/a/b") == "/a/b"
