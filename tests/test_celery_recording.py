"""Every task the Celery app runs is recorded, however it was sent, and Celery's own APIs
(update_state, AsyncResult, canvas) work on the record.

Real Redis, a real worker running tests/record_app.py (plain `@shared_task` tasks beside the
demonstration ones), a real web; producers are plain Python processes or this one.
"""

from __future__ import annotations

import datetime
import gc
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from celery import Celery, chain, chord, group
from celery.exceptions import TaskRevokedError
from kombu.exceptions import EncodeError, OperationalError

from taskstream.celery_app import create_celery
from taskstream.settings import Settings
from tests.harness import (
    Proc,
    RedisServer,
    Service,
    assert_contiguous,
    direct_recorder,
    poll_until_done,
    python,
    read_stream,
    submit,
    wait_for_worker,
    worker_command,
)

APP = "tests.record_app:app"


def start_worker(svc: Service, concurrency: int = 4) -> Proc:
    name = f"rec{len(svc.workers)}"
    cmd = worker_command(concurrency, f"{name}-{svc.prefix}@%h", app=APP)
    proc = Proc(name, cmd, svc.env, svc.log_dir).start()
    svc.workers.append(proc)
    wait_for_worker(proc)
    return proc


def states(events: list[tuple[int, dict]]) -> list[str]:
    return [snap["state"] for _, snap in events]


def run_python(svc: Service, code: str) -> list[str]:
    """Run `code` in a plain Python process with the deployment's environment; its stdout lines."""
    done = subprocess.run(
        [python(), "-c", code], env=svc.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="module")
def rec(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(redis_url, tmp_path_factory.mktemp("recording"))
    try:
        start_worker(svc)
        svc.start_web()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def app(rec: Service):
    """A producer in this process: the app as create_celery makes it for this deployment."""
    import tests.record_app  # noqa: F401  (registers the shared tasks)

    celery = create_celery(Settings.from_env(redis_url=rec.redis_url, key_prefix=rec.prefix))
    celery.loader.import_default_modules()
    yield celery
    celery.close()


def test_every_way_of_sending_records_pending_at_once_then_the_worker_runs_it(make_service):
    svc = make_service()
    svc.start_web()
    # No worker yet: what GET answers can only come from the producer.
    ids = run_python(
        svc,
        "from celery import signature\n"
        "import tests.record_app as m\n"
        "print(m.plain_add.delay(2, 3).id)\n"
        "print(m.plain_add.apply_async((4,), {'y': 5}, countdown=0).id)\n"
        "print(m.app.send_task('tests.record_app.plain_add', args=(1, 1)).id)\n"
        "print(signature('tests.record_app.plain_add', args=(10, 20), app=m.app).delay().id)\n"
        "import taskstream.demo as demo\n"
        "print(demo.add.delay(7, 8).id)\n",
    )
    assert len(ids) == 5
    for task_id in ids:
        response = httpx.get(f"{svc.url}/tasks/{task_id}")
        assert response.status_code == 200, response.text
        snap = response.json()
        assert (snap["state"], snap["seq"]) == ("PENDING", 1)
    assert httpx.get(f"{svc.url}/tasks/{ids[0]}").json()["task"] == "tests.record_app.plain_add"
    assert httpx.get(f"{svc.url}/tasks/{ids[4]}").json()["task"] == "add"

    recorder = direct_recorder(svc)
    try:
        details = recorder.details(ids[1])
        assert details is not None
        assert details["args"] == [4]
        assert details["kwargs"] == {"y": 5}
        assert details["queue"] == f"{svc.prefix}.tasks"
        assert details["parent_id"] is None and details["children"] == []
        assert recorder.details("no-such-task") is None
    finally:
        recorder.client.close()

    start_worker(svc)
    results = [5, 9, 2, 30, 15]
    for task_id, expected in zip(ids, results, strict=True):
        events = read_stream(svc.url, task_id, query="?last_event_id=0")
        assert_contiguous([i for i, _ in events], first=1)
        assert states(events) == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
        assert events[-1][1]["result"] == expected
    recorder = direct_recorder(svc)
    try:
        details = recorder.details(ids[0])
        assert details is not None
        assert details["worker"].startswith(f"rec0-{svc.prefix}@")
        assert isinstance(details["runtime"], float) and details["runtime"] >= 0
    finally:
        recorder.client.close()


def test_tasks_sent_by_celery_beat_are_recorded_when_sent(rec, tmp_path):
    beat = Proc(
        "beat",
        [python(), "-m", "celery", "-A", APP, "beat", "--schedule", str(tmp_path / "schedule"),
         "--loglevel", "INFO"],
        {**rec.env, "RECORD_APP_BEAT": "1"},
        rec.log_dir,
    ).start()  # fmt: skip
    # With the worker paused, a record can only come from beat's own publish.
    worker = rec.workers[0]
    worker.signal_group(signal.SIGSTOP)
    recorder = direct_recorder(rec)
    try:
        deadline = time.monotonic() + 30
        sent: list[str] = []
        while not sent:
            assert time.monotonic() < deadline, beat.tail()
            time.sleep(0.2)
            listed = httpx.get(f"{rec.url}/tasks?task=tests.record_app.plain_add&limit=100")
            ids = [t["id"] for t in listed.json()["items"]]
            sent = [i for i in ids if (recorder.details(i) or {}).get("args") == [20, 22]]
        assert httpx.get(f"{rec.url}/tasks/{sent[0]}").json()["state"] == "PENDING"
    finally:
        worker.signal_group(signal.SIGCONT)
        beat.stop()
        recorder.client.close()
    events = read_stream(rec.url, sent[0], query="?last_event_id=0", timeout=30)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    assert events[-1][1]["result"] == 42


def test_post_tasks_publishes_like_any_producer(rec):
    snap = submit(rec.url, "add", x=1, y=2)
    assert (snap["state"], snap["seq"]) == ("PENDING", 1)
    assert poll_until_done(rec.url, snap["id"])["result"] == 3
    recorder = direct_recorder(rec)
    try:
        details = recorder.details(snap["id"])
        assert details is not None
        assert details["kwargs"] == {"x": 1, "y": 2}
        assert details["queue"] == f"{rec.prefix}.tasks"
    finally:
        recorder.client.close()


def test_a_rerun_is_published_like_a_submission_and_names_its_original(rec):
    first = submit(rec.url, "add", x=2, y=5)
    poll_until_done(rec.url, first["id"])
    response = httpx.post(f"{rec.url}/tasks/{first['id']}/rerun")
    assert response.status_code == 202, response.text
    again = response.json()
    assert (again["state"], again["seq"]) == ("PENDING", 1)
    assert poll_until_done(rec.url, again["id"])["result"] == 7
    recorder = direct_recorder(rec)
    try:
        details = recorder.details(again["id"])
        assert details is not None
        assert details["rerun_of"] == first["id"]
        assert details["kwargs"] == {"x": 2, "y": 5}
    finally:
        recorder.client.close()


def test_large_arguments_are_stored_truncated(app, rec):
    big = "x" * 5000
    result = app.tasks["tests.record_app.plain_add"].delay(big, "y")
    assert result.get(timeout=30) == big + "y"
    recorder = direct_recorder(rec)
    try:
        details = recorder.details(result.id)
        assert details is not None
        assert details["args"]["truncated"] is True
        assert details["args"]["bytes"] > 4096
    finally:
        recorder.client.close()


def test_a_chain_each_step_followable_and_listed_as_its_parents_child(app, rec):
    add = app.tasks["tests.record_app.plain_add"]
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert result.get(timeout=30) == 10
    steps = [result.parent.parent, result.parent, result]
    snaps = [poll_until_done(rec.url, step.id) for step in steps]
    assert [s["state"] for s in snaps] == ["SUCCESS"] * 3
    assert [s["result"] for s in snaps] == [3, 6, 10]
    recorder = direct_recorder(rec)
    try:
        first, second, third = (recorder.details(step.id) for step in steps)
        assert first["children"] == [steps[1].id]
        assert second["children"] == [steps[2].id]
        assert second["parent_id"] == steps[0].id
        assert third["root_id"] == steps[0].id
    finally:
        recorder.client.close()


def open_gate(svc: Service, gate: str) -> None:
    recorder = direct_recorder(svc)
    try:
        recorder.client.set(gate, "1", ex=60)
    finally:
        recorder.client.close()


def test_a_chains_later_steps_and_a_chords_body_are_followable_before_they_are_sent(app, rec):
    # apply_async hands back the id of a chain's last step (of a chord's body) at once, but Celery
    # sends that message only when the steps before it are done: it is followable from the start.
    gated, add = app.tasks["tests.record_app.gated"], app.tasks["tests.record_app.plain_add"]
    total = app.tasks["tests.record_app.total"]
    gate = f"{rec.prefix}:gate:{uuid.uuid4().hex}"
    result = chain(gated.si(gate, 1), add.si(1, 2), add.s(3)).apply_async()
    body = chord([gated.si(gate, 4), add.si(1, 1)], total.s()).apply_async()
    for waiting, name in [(result.parent, "plain_add"), (result, "plain_add"), (body, "total")]:
        answer = httpx.get(f"{rec.url}/tasks/{waiting.id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "PENDING"
        assert answer.json()["task"] == f"tests.record_app.{name}"
    open_gate(rec, gate)
    events = read_stream(rec.url, result.id, query="?last_event_id=0", timeout=30)
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    assert events[-1][1]["result"] == 6
    assert poll_until_done(rec.url, body.id)["result"] == 6
    recorder = direct_recorder(rec)
    try:
        # What the message said when it was sent: the previous step's result comes first.
        last = recorder.details(result.id)
        assert (last["args"], last["parent_id"]) == ([3, 3], result.parent.id)
        assert recorder.details(result.parent.id)["children"] == [result.id]
    finally:
        recorder.client.close()


def test_a_group_or_chord_inside_a_chain_is_followable_before_it_is_sent(app, rec):
    # chain(a, group(b, c)) hands back b's and c's ids, and chain(a, group(b, c), d) hands
    # back d's (a chord's body): each answers at once, and runs to its end when its turn comes.
    gated, add = app.tasks["tests.record_app.gated"], app.tasks["tests.record_app.plain_add"]
    total = app.tasks["tests.record_app.total"]
    gate = f"{rec.prefix}:gate:{uuid.uuid4().hex}"
    fanned = chain(gated.si(gate, 1), group(add.si(2, 2), add.si(3, 3))).apply_async()
    joined = chain(gated.si(gate, 1), group(add.si(4, 4), add.si(5, 5)), total.s()).apply_async()
    # A pipeline per member: the group's result is each chain's last step.
    piped = chain(
        gated.si(gate, 1), group(chain(add.si(6, 6), add.s(1)), chain(add.si(7, 7), add.s(1)))
    ).apply_async()
    waiting = [*fanned.results, joined, *joined.parent.results, *piped.results]
    waiting += [r.parent for r in piped.results]
    for result in waiting:
        answer = httpx.get(f"{rec.url}/tasks/{result.id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "PENDING"
    open_gate(rec, gate)
    got = [poll_until_done(rec.url, r.id)["result"] for r in waiting]
    assert got == [4, 6, 18, 8, 10, 13, 15, 12, 14]
    recorder = direct_recorder(rec)
    try:
        parents = [recorder.details(r.id)["parent_id"] for r in fanned.results]
        assert parents == [fanned.parent.id] * 2
    finally:
        recorder.client.close()


def test_a_group_or_chord_after_a_failed_step_fails_with_it(app, rec):
    explode, add = app.tasks["tests.record_app.explode"], app.tasks["tests.record_app.plain_add"]
    total = app.tasks["tests.record_app.total"]
    fanned = chain(explode.si("before the group"), group(add.si(1, 1), add.si(2, 2))).apply_async()
    joined = chain(
        explode.si("before the chord"), group(add.si(1, 1), add.si(2, 2)), total.s()
    ).apply_async()
    piped = chain(
        explode.si("before the pipelines"), group(chain(add.si(1, 1), add.s(1)), add.si(2, 2))
    ).apply_async()
    pipeline = piped.results[0]
    ended = [*fanned.results, joined, *joined.parent.results, *piped.results, pipeline.parent]
    for result in ended:
        snap = poll_until_done(rec.url, result.id)
        assert (snap["state"], snap["error"]["type"]) == ("FAILURE", "KeyError"), snap


def test_a_group_after_a_cancelled_step_ends_with_it(app, rec):
    add = app.tasks["tests.record_app.plain_add"]
    result = chain(add.si(1, 1).set(countdown=2), group(add.si(2, 2), add.si(3, 3))).apply_async()
    first = result.parent
    assert httpx.delete(f"{rec.url}/tasks/{first.id}").status_code == 202
    for member in result.results:
        snap = poll_until_done(rec.url, member.id)
        assert snap["state"] == "REVOKED"
        assert first.id in snap["error"]["message"]


def test_the_steps_after_a_cancelled_one_end_with_it(app, rec):
    add = app.tasks["tests.record_app.plain_add"]
    result = chain(add.si(1, 1).set(countdown=2), add.s(1), add.s(1)).apply_async()
    first = result.parent.parent
    assert httpx.delete(f"{rec.url}/tasks/{first.id}").status_code == 202
    for step in (result.parent, result):
        snap = poll_until_done(rec.url, step.id)
        assert snap["state"] == "REVOKED"
        assert first.id in snap["error"]["message"]


def test_a_failed_chain_step_fails_the_steps_after_it_in_both_views(app, rec):
    add = app.tasks["tests.record_app.plain_add"]
    explode = app.tasks["tests.record_app.explode"]
    result = chain(add.s(1, 1), explode.si("mid-chain"), add.s(1)).apply_async()
    with pytest.raises(KeyError):
        result.get(timeout=30)
    # The last step was never sent; Celery fails it, and so does the record.
    last = poll_until_done(rec.url, result.id)
    assert last["state"] == "FAILURE"
    assert last["error"]["type"] == "KeyError"
    assert app.AsyncResult(result.id).state == "FAILURE"


def test_a_chord_and_a_group_return_their_results(app, rec):
    add = app.tasks["tests.record_app.plain_add"]
    total = app.tasks["tests.record_app.total"]
    result = chord([add.s(i, i) for i in range(4)], total.s()).apply_async()
    assert result.get(timeout=30) == 12
    header = result.parent
    members = [poll_until_done(rec.url, r.id) for r in header.results]
    assert [m["result"] for m in members] == [0, 2, 4, 6]
    recorder = direct_recorder(rec)
    try:
        assert {recorder.details(r.id)["group_id"] for r in header.results} == {header.id}
    finally:
        recorder.client.close()
    assert poll_until_done(rec.url, result.id)["result"] == 12

    grouped = group(add.s(i, 1) for i in range(3)).apply_async()
    assert grouped.get(timeout=30) == [1, 2, 3]


def test_update_state_progress_is_on_the_stream(app, rec):
    result = app.tasks["tests.record_app.stages"].delay(3)
    events = read_stream(rec.url, result.id, query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED"] + ["PROGRESS"] * 3 + ["SUCCESS"]
    progress = [s["progress"] for _, s in events if s["state"] == "PROGRESS"]
    assert [p["current"] for p in progress] == [1, 2, 3]
    assert [p["total"] for p in progress] == [3, 3, 3]
    assert [p["percent"] for p in progress] == [33.3, 66.7, 100.0]
    assert progress[0]["message"] == "stage 1"
    assert progress[0]["meta"] == {"current": 1, "total": 3, "message": "stage 1", "unit": "files"}
    assert "state" not in progress[0]
    assert result.get(timeout=10) == "staged"


# Celery's own state names too: a task may say STARTED or PENDING with a meta of its own, and
# AsyncResult then answers that state and meta, as with Celery's backends.
@pytest.mark.parametrize("state", ["DOWNLOADING", "STARTED", "PENDING"])
def test_a_custom_state_is_recorded_and_asyncresult_names_it(app, rec, state):
    gate = f"{rec.prefix}:gate:{uuid.uuid4().hex}"
    result = app.tasks["tests.record_app.custom_state"].delay(gate, state)
    deadline = time.monotonic() + 30
    while result.state != state or result.info != {"file": "a.csv", "done": 3}:
        assert time.monotonic() < deadline, (result.state, result.info)
        time.sleep(0.02)
    snap = httpx.get(f"{rec.url}/tasks/{result.id}").json()
    assert snap["state"] == "PROGRESS"
    assert snap["progress"]["state"] == state
    assert snap["progress"]["meta"] == {"file": "a.csv", "done": 3}
    assert snap["progress"]["current"] is None
    recorder = direct_recorder(rec)
    try:
        recorder.client.set(gate, "1", ex=60)
    finally:
        recorder.client.close()
    assert result.get(timeout=30) == "downloaded"


def test_a_message_from_a_producer_without_taskstream_is_recorded_on_receipt(rec):
    # A bare Celery app: the same broker and queue, nothing of taskstream imported.
    ids = run_python(
        rec,
        "import os\n"
        "from celery import Celery\n"
        "prefix = os.environ['KEY_PREFIX']\n"
        "bare = Celery('bare', broker=os.environ['REDIS_URL'])\n"
        "bare.conf.broker_transport_options = {'global_keyprefix': prefix + ':celery:'}\n"
        "r = bare.send_task('tests.record_app.plain_add', args=(20, 22), queue=prefix + '.tasks')\n"
        "import sys; assert 'taskstream' not in sys.modules\n"
        "print(r.id)\n",
    )
    task_id = ids[-1]
    done = poll_until_done(rec.url, task_id)
    assert done["result"] == 42
    events = read_stream(rec.url, task_id, query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    recorder = direct_recorder(rec)
    try:
        details = recorder.details(task_id)
        assert details is not None
        assert details["args"] == [20, 22]
        assert details["queue"] == f"{rec.prefix}.tasks"
    finally:
        recorder.client.close()


def test_a_retry_is_not_created_twice(app, rec):
    result = app.tasks["tests.record_app.retry_once"].delay()
    assert result.get(timeout=30) == "ok"
    events = read_stream(rec.url, result.id, query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "RETRY", "STARTED", "SUCCESS"]
    assert {s["submitted_at"] for _, s in events} == {events[0][1]["submitted_at"]}
    retry = events[3][1]
    assert retry["retries"] == 1
    assert retry["error"] == {"type": "ValueError", "message": "first attempt fails"}


def asyncresult_view(result) -> dict:
    return {"state": result.state, "ready": result.ready(), "successful": result.successful()}


def test_asyncresult_answers_as_the_record_for_success(app, rec):
    result = app.tasks["tests.record_app.plain_add"].delay(2, 2)
    assert result.get(timeout=30) == 4
    snap = httpx.get(f"{rec.url}/tasks/{result.id}").json()
    fresh = app.AsyncResult(result.id)
    assert asyncresult_view(fresh) == {"state": snap["state"], "ready": True, "successful": True}
    assert fresh.result == fresh.info == snap["result"] == 4
    assert fresh.date_done is not None


def test_a_result_celerys_json_takes_is_kept_as_plain_json(app, rec):
    # Dates, UUIDs, decimals and bytes, which Celery's JSON serializer writes, are results
    # too: kept as the JSON a client reads (no float NaN in JSON: null), not a FAILURE.
    result = app.tasks["tests.record_app.typed_result"].delay()
    expected = {
        "when": "2024-01-01T12:30:00+00:00",
        "day": "2024-01-02",
        "id": "00000000-0000-0000-0000-000000000005",
        "amount": "1.50",
        "nan": None,
        "raw": "bytes",
        "pair": [1, 2],
    }
    assert result.get(timeout=30) == expected
    snap = httpx.get(f"{rec.url}/tasks/{result.id}").json()
    assert snap["state"] == "SUCCESS"
    assert snap["result"] == expected


def test_a_task_id_sent_again_after_its_task_ended_is_not_run_and_the_worker_says_why(app, rec):
    task_id = f"report-{uuid.uuid4()}"
    add = app.tasks["tests.record_app.plain_add"]
    assert add.apply_async((1, 2), task_id=task_id).get(timeout=30) == 3
    add.apply_async((10, 20), task_id=task_id)
    deadline = time.monotonic() + 20
    while "a task id is used once" not in rec.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"task {task_id} already ended SUCCESS: a task id is used once" in rec.logs()
    # The record is final: the first run's result stands.
    assert httpx.get(f"{rec.url}/tasks/{task_id}").json()["result"] == 3


def test_get_learns_the_outcome_announced_while_its_subscription_was_down(tmp_path):
    # Redis drops a subscriber whose output buffer passes its pub/sub limit (32 MB by default,
    # 1 MB here), so the waiting .get() never receives the announcement of a large result;
    # redis-py connects and subscribes again by itself, and the waiter must still learn it.
    import tests.record_app  # noqa: F401  (registers the shared tasks)

    limit = ["--client-output-buffer-limit", "pubsub", "1mb", "1mb", "0"]
    server = RedisServer(extra_args=limit).start()
    svc = Service(server.url, tmp_path)
    celery = None
    try:
        start_worker(svc, concurrency=1)
        celery = create_celery(Settings.from_env(redis_url=server.url, key_prefix=svc.prefix))
        celery.loader.import_default_modules()
        result = celery.tasks["tests.record_app.big_result"].delay(2_000_000)
        assert len(result.get(timeout=20)) == 2_000_000
    finally:
        svc.stop()
        if celery is not None:
            celery.close()
        server.stop()


@contextmanager
def producer_on_private_redis(prefix: str) -> Iterator[tuple[Celery, RedisServer]]:
    """A producer's app (as create_celery makes it) on a redis-server of its own, no worker."""
    import tests.record_app  # noqa: F401  (registers the shared tasks)

    server = RedisServer().start()
    celery = create_celery(Settings.from_env(redis_url=server.url, key_prefix=prefix))
    try:
        celery.loader.import_default_modules()
        yield celery, server
    finally:
        celery.close()
        server.stop()


def test_a_chords_body_is_recorded_ahead_once_not_once_per_header_member():
    # Every header member's message carries the body: recorded for each, a chord of 40 cost its
    # producer 39 scripts run for nothing.
    with producer_on_private_redis("chord-once") as (celery, server):
        add, total = (
            celery.tasks["tests.record_app.plain_add"],
            celery.tasks["tests.record_app.total"],
        )
        client = redis.Redis.from_url(server.url)

        def scripts_run() -> int:
            stats = client.info("commandstats")
            return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0)
                       for name in ("eval", "evalsha"))  # fmt: skip

        before = scripts_run()
        body = chord([add.si(i, i) for i in range(40)], total.s()).apply_async()
        assert scripts_run() - before <= 40 + 2
        created = json.loads(client.hget(f"chord-once:task:{body.id}", "state"))
        assert created == "PENDING"
        client.close()


def test_a_result_dropped_while_redis_is_away_does_not_block_its_thread():
    # AsyncResult.__del__ stops waiting on its task: run by the garbage collector in whatever
    # thread it interrupts, it must never wait on the network (a group's members each wait).
    with producer_on_private_redis("dropped") as (celery, server):
        add = celery.tasks["tests.record_app.plain_add"]
        results = [add.delay(i, i) for i in range(3)]
        for result in results:
            result.then(lambda _: None, weak=True)  # waits on it, as a group's barrier does
        server.halt()
        started = time.monotonic()
        del result
        results.clear()
        gc.collect()
        assert time.monotonic() - started < 1.0


def test_get_raises_the_tasks_own_exception_with_its_arguments(app, rec):
    from tests.record_app import PaymentError

    refused = app.tasks["tests.record_app.refuse_payment"].delay()
    with pytest.raises(PaymentError) as raised:
        refused.get(timeout=30)
    assert raised.value.code == 402
    assert raised.value.args == (402, {"reason": "card declined"}, [1, 2])
    missing = app.tasks["tests.record_app.look_up"].delay("missing")
    with pytest.raises(KeyError) as raised_key:
        missing.get(timeout=30)
    assert raised_key.value.args == ("missing",)
    # Clients read the exception as before: its class and its text.
    snap = httpx.get(f"{rec.url}/tasks/{missing.id}").json()
    assert snap["error"] == {"type": "KeyError", "message": "'missing'"}

    by_hand = app.tasks["tests.record_app.fail_by_hand"].delay("bad input")
    with pytest.raises(ValueError, match="bad input"):
        by_hand.get(timeout=30)
    snap = httpx.get(f"{rec.url}/tasks/{by_hand.id}").json()
    assert snap["state"] == "FAILURE"
    assert snap["error"] == {"type": "ValueError", "message": "bad input"}


def test_a_message_that_cannot_be_sent_fails_its_record_rather_than_stay_pending(app, rec):
    # The record is made before the message is published, so that the task can be followed
    # before any worker has it; a publish that then fails must not leave it PENDING for ever.
    add = app.tasks["tests.record_app.plain_add"]
    task_id = str(uuid.uuid4())
    with pytest.raises(EncodeError):
        add.apply_async((object(), 1), task_id=task_id)
    snap = httpx.get(f"{rec.url}/tasks/{task_id}").json()
    assert snap["state"] == "FAILURE"
    assert snap["error"]["type"] == "EnqueueError"
    assert "not JSON serializable" in snap["error"]["message"]

    # A broker that does not answer (the record's Redis does).
    unreachable = Settings.from_env(
        redis_url=rec.redis_url, key_prefix=rec.prefix, celery_broker_url="redis://127.0.0.1:9/0"
    )
    producer = create_celery(unreachable)
    producer.conf.broker_connection_timeout = 0.5
    producer.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    task_id = str(uuid.uuid4())
    with pytest.raises(OperationalError):
        producer.send_task("tests.record_app.plain_add", (1, 2), task_id=task_id)
    snap = httpx.get(f"{rec.url}/tasks/{task_id}").json()
    assert (snap["state"], snap["error"]["type"]) == ("FAILURE", "EnqueueError")


def test_update_state_success_before_the_end_is_progress_and_the_return_value_wins(app, rec):
    result = app.tasks["tests.record_app.succeed_early"].delay()
    events = read_stream(rec.url, result.id, query="?last_event_id=0")
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert events[3][1]["progress"]["state"] == "SUCCESS"
    assert events[3][1]["progress"]["meta"] == {"rows": 10}
    assert events[-1][1]["result"] == "final"
    assert result.get(timeout=10) == "final"


def test_update_state_then_ignore_ends_the_task_as_it_said(app, rec):
    result = app.tasks["tests.record_app.succeed_by_hand"].delay()
    snap = poll_until_done(rec.url, result.id)
    assert (snap["state"], snap["result"]) == ("SUCCESS", {"rows": 3})
    assert result.get(timeout=10) == {"rows": 3}


def test_a_task_that_raises_ignore_ends_its_stream_and_says_why(app, rec):
    result = app.tasks["tests.record_app.skip"].delay()
    events = read_stream(rec.url, result.id, query="?last_event_id=0", timeout=30)
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "REVOKED"]
    assert events[-1][1]["error"]["type"] == "Ignore"


def test_a_task_replaced_by_another_ends_as_its_replacement(app, rec):
    result = app.tasks["tests.record_app.hand_over"].delay(2, 3)
    assert result.get(timeout=30) == 5
    events = read_stream(rec.url, result.id, query="?last_event_id=0", timeout=30)
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events)[-1] == "SUCCESS" and events[-1][1]["result"] == 5
    # Replaced is not an end: nothing terminal before the replacement's.
    assert not set(states(events)[:-1]) & {"SUCCESS", "FAILURE", "REVOKED"}, states(events)


def test_asyncresult_answers_as_the_record_for_failure(app, rec):
    result = app.tasks["tests.record_app.explode"].delay("boom")
    with pytest.raises(KeyError) as raised:
        result.get(timeout=30)
    assert "boom" in str(raised.value)
    snap = httpx.get(f"{rec.url}/tasks/{result.id}").json()
    assert snap["state"] == "FAILURE"
    assert snap["error"] == {"type": "KeyError", "message": "'boom'"}
    fresh = app.AsyncResult(result.id)
    assert asyncresult_view(fresh) == {"state": "FAILURE", "ready": True, "successful": False}
    assert isinstance(fresh.info, KeyError)


def test_asyncresult_answers_as_the_record_for_revoked(app, rec):
    snap = submit(rec.url, "sleep", seconds=30, steps=300)
    deadline = time.monotonic() + 30
    while httpx.get(f"{rec.url}/tasks/{snap['id']}").json()["state"] != "PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = app.AsyncResult(snap["id"])
    assert result.state == "PROGRESS"
    assert result.info["current"] >= 1
    assert httpx.delete(f"{rec.url}/tasks/{snap['id']}").status_code == 202
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert asyncresult_view(app.AsyncResult(snap["id"])) == {
        "state": "REVOKED",
        "ready": True,
        "successful": False,
    }
    assert httpx.get(f"{rec.url}/tasks/{snap['id']}").json()["state"] == "REVOKED"


def test_a_task_that_expired_before_it_ran_says_so(app, rec):
    # Celery revokes it on receipt, with a reason: the stream tells it from a cancel.
    gone = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    result = app.tasks["tests.record_app.plain_add"].apply_async((1, 2), expires=gone)
    events = read_stream(rec.url, result.id, query="?last_event_id=0", timeout=30)
    assert states(events)[-1] == "REVOKED"
    assert events[-1][1]["error"] == {"type": "TaskRevokedError", "message": "expired"}
    assert result.state == "REVOKED"


def test_a_task_revoked_with_celerys_own_revoke_says_so(app, rec):
    result = app.tasks["tests.record_app.plain_add"].apply_async((1, 2), countdown=2)
    result.revoke()
    events = read_stream(rec.url, result.id, query="?last_event_id=0", timeout=30)
    assert states(events)[-1] == "REVOKED"
    assert events[-1][1]["error"] == {"type": "TaskRevokedError", "message": "revoked"}


def test_a_running_task_terminated_by_celery_says_so(app, rec):
    gate = f"{rec.prefix}:gate:{uuid.uuid4().hex}"
    result = app.tasks["tests.record_app.gated"].delay(gate, 1)
    deadline = time.monotonic() + 30
    while httpx.get(f"{rec.url}/tasks/{result.id}").json()["state"] != "STARTED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result.revoke(terminate=True)
    events = read_stream(rec.url, result.id, query="?last_event_id=0", timeout=30)
    assert states(events)[-1] == "REVOKED", states(events)
    assert events[-1][1]["error"]["type"] == "TaskRevokedError"
    assert "terminated" in events[-1][1]["error"]["message"]


def test_get_waits_on_the_tasks_announcements(app, rec):
    # While get() waits it is subscribed to the task's channel, and once answered it is not.
    gate = f"{rec.prefix}:gate:{uuid.uuid4().hex}"
    result = app.tasks["tests.record_app.custom_state"].delay(gate)
    answer: list[object] = []
    waiter = threading.Thread(target=lambda: answer.append(result.get(timeout=30)))
    waiter.start()
    recorder = direct_recorder(rec)
    channel = f"{rec.prefix}:changes:{result.id}"
    try:
        deadline = time.monotonic() + 10
        while recorder.client.pubsub_numsub(channel)[0][1] != 1:
            assert time.monotonic() < deadline, "get() is not subscribed to the task's changes"
            time.sleep(0.02)
        recorder.client.set(gate, "1", ex=60)
        waiter.join(30)
        assert answer == ["downloaded"]
        # Its connection closed, which Redis takes in a moment of its own (longer on a loaded
        # machine: seen once in a full run).
        deadline = time.monotonic() + 5
        while recorder.client.pubsub_numsub(channel)[0][1] != 0:
            assert time.monotonic() < deadline, "get() is still subscribed once answered"
            time.sleep(0.02)
    finally:
        recorder.client.close()


def test_get_on_message_hears_each_state_as_asyncresult_reads_it(app, rec):
    seen: list[dict] = []
    # Started in 3 s: get() hears only what is announced once it has subscribed (on a loaded
    # machine a task sent plainly could start first: seen once in CI).
    result = app.tasks["tests.record_app.big_result"].apply_async((10, 0.5), countdown=3)
    assert result.get(timeout=30, on_message=seen.append) == "x" * 10
    started = [m for m in seen if m["status"] == "STARTED"]
    assert started, seen
    # The worker's name, as AsyncResult(...).info gives it while it runs, not None.
    assert started[0]["result"]["hostname"].startswith("rec")


def test_stats_count_every_task_of_the_project_not_only_submittable_ones(app, rec):
    # The worker's tasks are what the project has: plain @shared_task ones have no schema here.
    add = app.tasks["tests.record_app.plain_add"]
    assert add.delay(2, 2).get(timeout=30) == 4
    deadline = time.monotonic() + 10
    while True:
        body = httpx.get(f"{rec.url}/stats", timeout=5).json()
        names = {r["task"]: r for r in body["runtimes"]}
        if "tests.record_app.plain_add" in names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert names["tests.record_app.plain_add"]["count"] >= 1
    assert not any(name.startswith("celery.") for name in names)
