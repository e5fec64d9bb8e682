"""GET /tasks shows every task a caller may see, newest first, however many newer tasks others
submit: a page examines a bounded number of tasks and the cursor carries on (issue 10, item 4).
In-process against a real Redis; tasks are recorded as the web records them."""

from __future__ import annotations

import base64
import re
import time
import uuid

import pytest

from taskstream.record import Change, new_task_fields, utcnow
from taskstream.states import TaskState
from taskstream.web.services import services

ALICE = "alice-token-" + "a" * 32
MALLORY = "mallory-token-" + "m" * 32
OPS = "ops-token-" + "o" * 32
TOKENS = f"alice:{ALICE},mallory:{MALLORY},ops:{OPS}:admin"


async def record(
    owner: str, score: float, task: str = "add", state: TaskState | None = None
) -> str:
    record = services().record
    task_id = str(uuid.uuid4())
    now = utcnow()
    await record.record(
        Change(
            task_id, new_task_fields(task_id, task, now, owner), create=True, score=score, at=now
        )
    )
    if state is not None:
        await record.record(Change(task_id, {"state": state, "finished_at": utcnow()}))
    return task_id


async def every_page(client, token: str, query: str) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    """All ids over all pages (and how many pages), following `next` to its end."""
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = f"/tasks?{query}" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        body = await response.get_json()
        pages += 1
        ids += [t["id"] for t in body["items"]]
        cursor = body["next"]
        if cursor is None:
            return ids, pages
        assert pages < 100


async def test_newer_tasks_of_others_do_not_hide_a_callers_own(make_app):
    app = await make_app(api_tokens=TOKENS, secret_key="s" * 32)
    client = app.test_client()
    async with app.app_context():
        mine = [await record("alice", 1_000 + i) for i in range(3)]
        for i in range(101):  # more than a page of newer tasks alice cannot see
            await record("mallory", 2_000 + i)
    for limit in (1, 2, 20, 100):
        ids, _ = await every_page(client, ALICE, f"limit={limit}")
        assert ids == mine[::-1], limit


async def test_past_the_scan_bound_the_cursor_carries_on(make_app):
    app = await make_app(api_tokens=TOKENS, secret_key="s" * 32)
    client = app.test_client()
    async with app.app_context():
        mine = [await record("alice", 1_000 + i) for i in range(2)]
        for i in range(2_300):  # beyond what one request examines (2,000)
            await record("mallory", 5_000 + i)
        newest = await record("alice", 9_000)
    first = await client.get("/tasks?limit=5", headers={"Authorization": f"Bearer {ALICE}"})
    body = await first.get_json()
    assert [t["id"] for t in body["items"]] == [newest]  # short, but not the end
    assert body["next"] is not None
    ids, pages = await every_page(client, ALICE, "limit=5")
    assert ids == [newest, *mine[::-1]]
    assert pages == 2


def cursor_text(cursor: str) -> str:
    """What a cursor says to anyone who decodes it, as a curious caller would."""
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode(errors="replace")


async def test_a_cursor_names_no_task_the_caller_may_not_see(make_app):
    app = await make_app(api_tokens=TOKENS, secret_key="s" * 32)
    client = app.test_client()
    async with app.app_context():
        mine = await record("alice", 1_000)
        theirs = [await record("mallory", 5_000 + i) for i in range(2_100)]
    hidden = set(theirs)
    cursor = None
    seen: list[str] = []
    while True:
        url = "/tasks?limit=5" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(url, headers={"Authorization": f"Bearer {ALICE}"})
        body = await response.get_json()
        seen += [t["id"] for t in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
        # The scan stopped among mallory's tasks: the cursor carries on from there, but says
        # nothing of which task it stopped at.
        for text in (cursor, cursor_text(cursor)):
            assert not any(task_id in text for task_id in hidden), text
            assert not any(task_id[:8] in text for task_id in hidden), text
        # Nor when one of them was submitted (their scores are 5000.0, 5001.0, ...).
        assert not re.search(r"5\d{3}\.0", cursor_text(cursor)), cursor_text(cursor)
    assert seen == [mine]


@pytest.mark.parametrize("secured", [True, False])
async def test_a_tampered_cursor_is_a_400_not_a_fault(make_app, secured):
    # With authentication on, a cursor is sealed (a forged one fails its tag); off, it is a
    # plain position, and what is not one of ours fails to parse.
    settings = {"api_tokens": TOKENS, "secret_key": "s" * 32} if secured else {}
    app = await make_app(**settings)
    client = app.test_client()
    async with app.app_context():
        for i in range(3):
            await record("alice", 1_000 + i)
    first = await client.get("/tasks?limit=1", headers={"Authorization": f"Bearer {ALICE}"})
    given = (await first.get_json())["next"]
    assert given is not None
    score = "1002.0"
    assert (cursor_text(given).split(" ")[0] == score) is not secured
    flipped = given[:-2] + ("A" if given[-2] != "A" else "B") + given[-1]
    assert (await client.get(f"/tasks?cursor={flipped}", headers={
        "Authorization": f"Bearer {ALICE}"})).status_code == 400  # fmt: skip
    for text in (f"{score} -1", f"{score} 1.5", f"{score} 99999999999999999999", score,
                 "nan 0", f"{score} 0 0", f"{score} 0b6f", f"{score} \u0661"):  # fmt: skip
        forged = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        response = await client.get(
            f"/tasks?cursor={forged}", headers={"Authorization": f"Bearer {ALICE}"}
        )
        assert response.status_code == 400, (text, await response.get_data())
        assert (await response.get_json())["type"] == "/problems/bad-cursor"


async def test_admin_filters_find_old_matches_behind_many_newer_tasks(make_app):
    app = await make_app(api_tokens=TOKENS, secret_key="s" * 32)
    client = app.test_client()
    async with app.app_context():
        failed = await record("alice", 1_000, "fail", TaskState.FAILURE)
        slept = await record("alice", 1_001, "sleep")
        for i in range(150):
            await record("mallory", 2_000 + i, "add", TaskState.SUCCESS)
    for limit in (1, 5, 50):
        assert (await every_page(client, OPS, f"limit={limit}&state=FAILURE"))[0] == [failed]
        assert (await every_page(client, OPS, f"limit={limit}&task=sleep"))[0] == [slept]


async def ran(owner: str, state: TaskState, runtime: float) -> None:
    """A task of `owner` that ran for `runtime` seconds and ended `state`, as a worker records."""
    task_id = await record(owner, 1.0)
    started = time.time() - runtime
    await services().record.record(
        Change(task_id, {"state": "STARTED", "started_ts": started}, clock=started)
    )
    await services().record.record(
        Change(task_id, {"state": state, "finished_at": utcnow()}, clock=started + runtime)
    )


async def test_throughput_and_runtimes_of_a_caller_are_its_own_tasks(make_app):
    app = await make_app(api_tokens=TOKENS, secret_key="s" * 32)
    client = app.test_client()
    async with app.app_context():
        await ran("alice", TaskState.SUCCESS, 0.5)
        await ran("alice", TaskState.SUCCESS, 1.5)
        for _ in range(3):
            await ran("mallory", TaskState.FAILURE, 9.0)
    response = await client.get("/stats", headers={"Authorization": f"Bearer {ALICE}"})
    body = await response.get_json()
    assert body["counted"] == 2
    totals = {s: sum(m[s] for m in body["per_minute"]) for s in ("SUCCESS", "FAILURE")}
    assert totals == {"SUCCESS": 2, "FAILURE": 0}
    add = next(r for r in body["runtimes"] if r["task"] == "add")
    assert (add["count"], add["p50"], add["p95"]) == (2, 0.5, 1.5)
