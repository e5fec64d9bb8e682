"""The Python client against the real service: its calls, and `follow()` across a restart of
the web process mid-task (SIGTERM ends the streams; the client resumes on the new process with
Last-Event-ID), sync and async. The follower's every branch is in test_follow.py, in-process."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from taskstream.client import AsyncClient, Client, FollowOptions, ProblemError
from tests.harness import ROOT, Service

# Never fall back to polling here: the proof is that streaming alone loses nothing.
STREAM_ONLY = FollowOptions(patience=30, stream_attempts=1_000)


def assert_every_change_once(seqs: list[int], first: int) -> None:
    assert seqs == list(range(first, first + len(seqs))), seqs


def restartable(make_service) -> Service:
    svc = make_service()
    svc.start_worker(concurrency=1)
    svc.start_web()
    return svc


def test_follow_resumes_across_a_web_restart(make_service):
    svc = restartable(make_service)
    notices: list[str] = []
    with Client(svc.url) as client:
        snap = client.submit("sleep", seconds=3, steps=15)
        follow = client.follow(snap["id"], after=0, options=STREAM_ONLY, on_notice=notices.append)
        seen = []
        for change in follow:
            seen.append(change)
            if len(seen) == 4:
                svc.restart_web()  # the stream breaks while this loop is away
    assert_every_change_once([s["seq"] for s in seen], first=1)
    assert seen[-1]["state"] == "SUCCESS" and follow.final == seen[-1]
    assert follow.stats.reconnects >= 1, notices
    assert (follow.stats.repeated, follow.stats.skipped, follow.stats.polls) == (0, 0, 0)
    assert any("connection lost" in n for n in notices), notices


async def test_async_follow_resumes_across_a_web_restart(make_service):
    svc = restartable(make_service)
    async with AsyncClient(svc.url) as client:
        snap = await client.submit("sleep", seconds=3, steps=15)
        follow = client.follow(snap["id"], after=snap["seq"], options=STREAM_ONLY)
        seen = []
        async for change in follow:
            seen.append(change)
            if len(seen) == 3:
                await asyncio.to_thread(svc.restart_web)
        assert_every_change_once([s["seq"] for s in seen], first=2)
        assert seen[-1]["state"] == "SUCCESS"
        assert follow.stats.reconnects >= 1
        assert (follow.stats.repeated, follow.stats.skipped) == (0, 0)

        assert (await client.get(snap["id"]))["state"] == "SUCCESS"
        with pytest.raises(ProblemError) as finished:
            await client.cancel(snap["id"])
        assert finished.value.status == 409 and finished.value.problem["state"] == "SUCCESS"


def test_the_calls_against_the_service(service):
    with Client(service.url) as client:
        names = {t["name"] for t in client.task_types()}
        assert {"add", "sleep"} <= names
        snap = client.submit("add", 2, 3)
        assert snap["links"]["self"] == f"/tasks/{snap['id']}"
        done = list(client.follow(snap["id"]))[-1]
        assert done["result"] == 5
        page = client.list(task="add", state="SUCCESS", limit=50)
        assert snap["id"] in {s["id"] for s in page.items}

        running = client.submit("sleep", seconds=30, steps=30)
        assert client.cancel(running["id"])["state"] == "REVOKED"
        with pytest.raises(ProblemError) as invalid:
            client.submit("sleep", seconds=-1)
        assert invalid.value.status == 422
        assert invalid.value.type == "/problems/validation"
        assert invalid.value.problem["errors"][0]["field"] == "seconds"
        with pytest.raises(ProblemError) as missing:
            list(client.follow("no-such-task"))
        assert missing.value.status == 404


def test_the_readme_examples_run(service, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for block in blocks:
        code = block.replace("http://localhost:8000/jobs", service.url)
        code = code.replace("http://localhost:8000", service.url)
        # The async example runs its own loop: give it a thread, away from this test's loop.
        thread = threading.Thread(target=exec, args=(code, {"__name__": "readme"}))
        thread.start()
        thread.join(60)
    printed = capsys.readouterr().out.splitlines()
    assert "SUCCESS" in printed[-1]  # the async example's last change
    assert any(line.startswith("409 /problems/task-finished") for line in printed), printed


def test_a_stream_quiet_for_longer_than_its_headers_wait_is_kept(service):
    # The stream's headers must come within 10 s (a hung server is given up on), but a task
    # quiet for longer than that between changes is not a hung server: its stream stays open
    # on the keepalives' 45 s, with no reconnection.
    notices: list[str] = []
    with Client(service.url) as client:
        snap = client.submit("sleep", seconds=12, steps=1)
        follow = client.follow(snap["id"], options=STREAM_ONLY, on_notice=notices.append)
        states = [change["state"] for change in follow]
    assert states[-1] == "SUCCESS", states
    assert follow.stats.reconnects == 0, notices
    assert notices == []
