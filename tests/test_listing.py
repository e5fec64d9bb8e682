"""Listing (GET /tasks) and polling (GET /tasks/{id}) in-process against a real Redis: newest
first, filters, cursors that neither skip nor repeat a task (ties in creation time included), and
304 until the next change. Tasks are recorded as the web and the workers record them; no worker
runs."""

from __future__ import annotations

import uuid

from taskstream.record import Change, new_task_fields, utcnow
from taskstream.states import TaskState
from taskstream.web.services import services


async def record(task: str, score: float, state: TaskState | None = None) -> str:
    record = services().record
    task_id = str(uuid.uuid4())
    now = utcnow()
    fields = new_task_fields(task_id, task, now)
    await record.record(Change(task_id, fields, create=True, score=score, at=now))
    if state is not None:
        await record.record(Change(task_id, {"state": state, "finished_at": utcnow()}))
    return task_id


async def test_newest_first_with_filters_and_cursors(make_app):
    app = await make_app()
    client = app.test_client()
    async with app.app_context():
        # Three share one creation time: the cursor must still pass each exactly once.
        added = [
            await record("add", score, TaskState.SUCCESS) for score in (100, 101, 102, 102, 102)
        ]
        failed = await record("fail", 103, TaskState.FAILURE)
        pending = await record("sleep", 104)

    async def page(query: str) -> dict:
        response = await client.get(f"/tasks?{query}")
        assert response.status_code == 200
        return await response.get_json()

    everything = await page("")
    ids = [t["id"] for t in everything["items"]]
    assert (
        ids[:2] == [pending, failed]
        and set(ids[2:5]) == set(added[2:])
        and ids[5:]
        == [
            added[1],
            added[0],
        ]
    )
    assert everything["next"] is None
    assert everything["items"][0]["links"]["self"] == f"/tasks/{pending}"

    for limit in (1, 2, 3):
        seen: list[str] = []
        cursor = None
        while True:
            got = await page(f"limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
            assert len(got["items"]) <= limit
            seen += [t["id"] for t in got["items"]]
            cursor = got["next"]
            if cursor is None:
                break
        assert seen == ids, limit

    only_failed = await page("state=FAILURE")
    assert [t["id"] for t in only_failed["items"]] == [failed]
    some_adds = await page("task=add&state=SUCCESS,REVOKED&limit=3")
    assert [t["id"] for t in some_adds["items"]] == ids[2:5]
    assert some_adds["next"] is not None
    rest = await page(f"task=add&state=SUCCESS&limit=3&cursor={some_adds['next']}")
    assert [t["id"] for t in rest["items"]] == ids[5:]
    assert rest["next"] is None


async def test_a_cursor_this_service_did_not_give_is_a_400(app):
    for cursor in ("!!!", "bm90IGEgY3Vyc29y", "bmFuIDBiNmY"):  # junk, no score, a NaN score
        response = await app.test_client().get(f"/tasks?cursor={cursor}")
        assert response.status_code == 400
        assert (await response.get_json())["type"] == "/problems/bad-cursor"


async def test_polling_with_if_none_match_gets_304_until_the_next_change(app):
    client = app.test_client()
    async with app.app_context():
        task_id = await record("sleep", 100)
    first = await client.get(f"/tasks/{task_id}")
    etag = first.headers["ETag"]
    assert etag == f'"{(await first.get_json())["seq"]}"'
    same = await client.get(f"/tasks/{task_id}", headers={"If-None-Match": etag})
    assert (same.status_code, await same.get_data()) == (304, b"")
    assert same.headers["ETag"] == etag
    async with app.app_context():
        await services().record.record(Change(task_id, {"state": TaskState.STARTED}))
    again = await client.get(f"/tasks/{task_id}", headers={"If-None-Match": etag})
    assert again.status_code == 200
    assert (await again.get_json())["state"] == "STARTED"
    assert again.headers["ETag"] != etag


async def test_if_none_match_compares_whole_tags_and_star_matches_any(app):
    client = app.test_client()
    async with app.app_context():
        task_id = await record("sleep", 100)
        for _ in range(11):  # seq 12: a tag "1" is in it as text, but not as a tag
            await services().record.record(Change(task_id, {"state": TaskState.PROGRESS}))
    url = f"/tasks/{task_id}"
    etag = (await client.get(url)).headers["ETag"]
    assert etag == '"12"'
    for matching in ("*", '"12"', 'W/"12"', '"3", "12"', '"3",W/"12" ,"4"'):
        response = await client.get(url, headers={"If-None-Match": matching})
        assert response.status_code == 304, matching
    for other in ('"1"', '"2"', '"12', "12", '"3", "4"', 'W/"1"'):
        response = await client.get(url, headers={"If-None-Match": other})
        assert response.status_code == 200, other
