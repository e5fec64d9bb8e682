"""The other routes: task types, health and readiness; and a stream's clean-up."""

from __future__ import annotations

import asyncio

import httpx

from taskstream.settings import Settings
from taskstream.web.app import create_app
from tests.harness import new_prefix, poll_until_done, submit

# Listing, filters and cursors: test_listing.py (in-process).


def test_task_types_describe_each_submittable_task(service):
    types = {t["name"]: t for t in httpx.get(f"{service.url}/task-types").json()}
    assert set(types) == {"add", "sleep", "fail", "flaky"}
    sleep = types["sleep"]
    assert sleep["description"]
    assert sleep["schema"]["properties"]["seconds"]["minimum"] == 0
    assert sleep["schema"]["properties"]["steps"]["default"] == 10
    assert sleep["schema"]["required"] == ["seconds"]
    assert types["add"]["schema"]["properties"]["x"]["type"] == "number"


def test_health_and_readiness(service):
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "redis": True, "subscriber": True}


def test_dashboard_page_is_served(service):
    response = httpx.get(f"{service.url}/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


async def test_a_client_that_goes_away_is_unsubscribed_at_once(redis_url):
    app = create_app(Settings.from_env(redis_url=redis_url, key_prefix=new_prefix()))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        svc = app.extensions["taskstream"]
        assert await svc.hub.wait_live(5)
        created = await client.post("/tasks", json={"task": "add", "args": [1, 2]})
        task_id = (await created.get_json())["id"]
        async with client.request(f"/tasks/{task_id}/events") as connection:
            await connection.send_complete()
            await connection.receive()  # the retry hint
            await connection.receive()  # the current snapshot
            assert svc.hub.streams == 1
            await connection.disconnect()
        for _ in range(50):
            if svc.hub.streams == 0:
                break
            await asyncio.sleep(0.02)
        assert svc.hub.streams == 0


# Polling with If-None-Match: test_listing.py (in-process).


def test_a_304_carries_its_validators_and_nothing_about_a_body(service):
    snap = submit(service.url, "add", x=1, y=2)
    poll_until_done(service.url, snap["id"])
    url = f"{service.url}/tasks/{snap['id']}"
    etag = httpx.get(url).headers["etag"]
    same = httpx.get(url, headers={"If-None-Match": etag})
    assert (same.status_code, same.content) == (304, b"")
    assert same.headers["etag"] == etag
    assert same.headers["cache-control"] == "no-cache"
    # RFC 9110 §15.4.5: a 304 has no content, so nothing describes one.
    assert "content-type" not in same.headers
    assert "content-length" not in same.headers
