"""POST /tasks on a Redis broker publishes from the event loop (taskstream.fast_publish): the
message in the queue is the one `apply_async` would have sent, routes are honoured, a project's
publish hooks see it, a real worker runs it, and a push that fails leaves the task FAILED.

The web app runs in this process (no worker) except in the end-to-end test.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery.signals import after_task_publish, before_task_publish

from taskstream.recording import OWNER_HEADER
from taskstream.registry import submittable
from taskstream.tracked import TrackedTask
from tests.harness import poll_until_done, submit

SEP = "\x06\x16"


def queue_key(prefix: str, queue: str | None = None) -> str:
    """Where kombu's Redis transport keeps a queue of this deployment (its global key prefix)."""
    return f"{prefix}:celery:{queue or prefix + '.tasks'}"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def services_of(app: Any) -> Any:
    return app.extensions["taskstream"]


def decoded(raw_message: bytes) -> dict[str, Any]:
    """A message as the Redis transport stores it, its body decoded, per-message values dropped."""
    envelope = json.loads(raw_message)
    props = envelope["properties"]
    assert props["body_encoding"] == "base64"
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    for name in ("id", "root_id", "origin"):
        assert envelope["headers"].pop(name)
    for name in ("correlation_id", "delivery_tag", "reply_to"):
        assert props.pop(name)
    return envelope


async def post(app: Any, task: str = "add", **kwargs: Any) -> Any:
    response = await app.test_client().post("/tasks", json={"task": task, "kwargs": kwargs})
    return response


def hooks() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """A project's own publish hooks: what each was sent, and on which thread."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def before(**kw: Any) -> None:
        seen.append(("before", {**kw, "thread": threading.current_thread().name}))

    def after(**kw: Any) -> None:
        seen.append(("after", {**kw, "thread": threading.current_thread().name}))

    before_task_publish.connect(before, weak=False)
    after_task_publish.connect(after, weak=False)

    def disconnect() -> None:
        before_task_publish.disconnect(before)
        after_task_publish.disconnect(after)

    return seen, disconnect


async def test_the_message_is_the_one_apply_async_sends(make_app, raw):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    response = await post(app, x=2, y=3)
    assert response.status_code == 202
    task_id = (await response.get_json())["id"]
    assert svc.fast.enabled is True
    fast = raw.lrange(queue_key(prefix), 0, -1)
    assert len(fast) == 1
    assert json.loads(fast[0])["headers"]["id"] == task_id

    # The same task sent Celery's way, by the same app.
    owner = json.loads(fast[0])["headers"][OWNER_HEADER]
    svc.celery.tasks["add"].apply_async(
        kwargs={"x": 2, "y": 3}, task_id=str(uuid.uuid4()), headers={OWNER_HEADER: owner}
    )
    both = raw.lrange(queue_key(prefix), 0, -1)
    assert len(both) == 2
    celerys = decoded(both[0])
    ours = decoded(both[1])
    assert ours == celerys
    assert ours["properties"]["delivery_info"] == {
        "exchange": "",
        "routing_key": f"{prefix}.tasks",
    }
    assert ours["body"][1] == {"x": 2, "y": 3}


async def test_published_on_the_event_loop_with_the_publish_signals(make_app, raw):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    seen, disconnect = hooks()
    lengths: list[int] = []
    probe = lambda **_: lengths.append(raw.llen(queue_key(prefix)))  # noqa: E731
    before_task_publish.connect(probe, weak=False)
    after_task_publish.connect(probe, weak=False)
    try:
        response = await post(app, x=1, y=1)
    finally:
        disconnect()
        before_task_publish.disconnect(probe)
        after_task_publish.disconnect(probe)
    assert response.status_code == 202
    task_id = (await response.get_json())["id"]
    assert [kind for kind, _ in seen] == ["before", "after"]
    before, after = seen[0][1], seen[1][1]
    # Not on the thread pool Celery's synchronous publish needs.
    assert before["thread"] == threading.main_thread().name
    assert before["sender"] == after["sender"] == "add"
    assert before["headers"]["id"] == after["headers"]["id"] == task_id
    assert OWNER_HEADER in before["headers"]
    assert before["exchange"] == after["exchange"] == ""
    assert before["routing_key"] == after["routing_key"] == f"{prefix}.tasks"
    assert before["properties"]["correlation_id"] == task_id
    assert before["properties"]["reply_to"] == svc.celery.thread_oid
    assert [q.name for q in before["declare"]] == [f"{prefix}.tasks"]
    assert "max_retries" in before["retry_policy"]
    assert before["body"][1] == {"x": 1, "y": 1}
    # Sent before the message is queued, and after it is.
    assert lengths == [0, 1]
    # Recorded once, as it was sent.
    snap = json.loads(raw.hget(f"{prefix}:task:{task_id}", "seq") or b"0")
    assert snap == 1


async def test_task_routes_and_priority_are_honoured(make_app, raw):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    other = f"{prefix}.other"
    svc.celery.conf.task_routes = {"add": {"queue": other, "priority": 5}}
    svc.celery.amqp.flush_routes()
    svc.celery.amqp.__dict__.pop("router", None)
    response = await post(app, x=4, y=5)
    assert response.status_code == 202
    # kombu's Redis transport: priority 5 goes to the queue's list for step 3.
    key = queue_key(prefix, other) + SEP + "3"
    fast = raw.lrange(key, 0, -1)
    assert len(fast) == 1
    assert raw.llen(queue_key(prefix)) == 0
    owner = json.loads(fast[0])["headers"][OWNER_HEADER]
    svc.celery.tasks["add"].apply_async(
        kwargs={"x": 4, "y": 5}, task_id=str(uuid.uuid4()), headers={OWNER_HEADER: owner}
    )
    both = raw.lrange(key, 0, -1)
    assert len(both) == 2
    ours = decoded(both[1])
    assert ours == decoded(both[0])
    assert ours["properties"]["priority"] == 5
    assert ours["properties"]["delivery_info"]["routing_key"] == other
    snap = (await (await app.test_client().get(f"/tasks/{json.loads(fast[0])['headers']['id']}"))
            .get_json())  # fmt: skip
    assert snap["state"] == "PENDING"


async def test_a_named_exchange_goes_celerys_way(make_app, raw):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    other = f"{prefix}.named"
    svc.celery.conf.task_routes = {
        "add": {"queue": other, "exchange": other, "routing_key": other},
    }
    svc.celery.amqp.flush_routes()
    svc.celery.amqp.__dict__.pop("router", None)
    seen, disconnect = hooks()
    try:
        response = await post(app, x=1, y=2)
    finally:
        disconnect()
    assert response.status_code == 202
    assert seen[0][1]["thread"].startswith("celery-publish")
    assert seen[0][1]["exchange"] == other
    assert raw.llen(queue_key(prefix, other)) == 1


class TenantTask(TrackedTask):
    """A task class of a project's own whose apply_async adds a header, as projects do for
    tenants, tracing or de-duplication."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        headers = dict(options.pop("headers", None) or {})
        headers.setdefault("tenant", "acme")
        return super().apply_async(args, kwargs, headers=headers, **options)


@submittable(base=TenantTask)
def tenant_report(title: str) -> str:
    return title


@submittable
def ordered(n: int, ch: str = "x") -> str:
    return ch * n


async def test_task_types_list_parameters_in_the_order_args_bind_them(make_app):
    # Positional `args` (taskctl's --arg) bind in the signature's order, which is the order
    # GET /task-types must show: JSON answers kept their keys sorted, `ch` before `n`.
    app = await make_app()
    types = await (await app.test_client().get("/task-types")).get_json()
    schema = next(t["schema"] for t in types if t["name"] == f"{__name__}.ordered")
    assert list(schema["properties"]) == ["n", "ch"]


async def test_a_task_class_with_its_own_apply_async_goes_through_it(make_app, raw):
    app = await make_app()
    prefix = services_of(app).settings.key_prefix
    response = await post(app, f"{__name__}.tenant_report", title="Q3")
    assert response.status_code == 202
    message = decoded(raw.lpop(queue_key(prefix)))
    assert message["headers"]["tenant"] == "acme"


async def test_an_app_in_eager_mode_is_refused_a_submission_not_run_in_the_web(make_app, raw):
    # task_always_eager would run the task inside the web process (holding its event loop for
    # the task's whole run) and then fail the request: refused before anything is sent or run.
    app = await make_app()
    svc = services_of(app)
    svc.celery.conf.task_always_eager = True
    listed = await (await app.test_client().get("/tasks")).get_json()
    response = await post(app, x=1, y=2)
    assert response.status_code == 503
    problem = await response.get_json()
    assert problem["type"] == "/problems/queue-unavailable"
    assert "task_always_eager" in problem["detail"]
    assert await (await app.test_client().get("/tasks")).get_json() == listed


async def test_a_push_that_fails_leaves_the_task_failed(make_app, raw):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    assert (await post(app, x=1, y=1)).status_code == 202
    raw.delete(queue_key(prefix))
    raw.set(queue_key(prefix), "not a list")  # every LPUSH to the queue fails
    response = await post(app, x=1, y=1)
    assert response.status_code == 503
    assert (await response.get_json())["type"].endswith("queue-unavailable")
    listed = await (await app.test_client().get("/tasks")).get_json()
    failed = [t for t in listed["items"] if t["state"] == "FAILURE"]
    assert len(failed) == 1
    assert failed[0]["error"]["type"] == "EnqueueError"
    # One change, one moment: it ended when it was last changed.
    assert failed[0]["finished_at"] == failed[0]["updated_at"]


async def test_a_rerun_whose_push_fails_ends_at_its_last_change(make_app, raw):
    app = await make_app()
    prefix = services_of(app).settings.key_prefix
    original = await (await post(app, x=1, y=1)).get_json()
    raw.delete(queue_key(prefix))
    raw.set(queue_key(prefix), "not a list")  # every LPUSH to the queue fails
    response = await app.test_client().post(f"/tasks/{original['id']}/rerun")
    assert response.status_code == 503
    listed = await (await app.test_client().get("/tasks")).get_json()
    failed = [t for t in listed["items"] if t["state"] == "FAILURE"]
    assert [t["error"]["type"] for t in failed] == ["EnqueueError"]
    assert failed[0]["finished_at"] == failed[0]["updated_at"]


async def test_a_record_that_cannot_be_made_sends_nothing(make_app, raw, monkeypatch):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    assert (await post(app, x=1, y=1)).status_code == 202
    raw.delete(queue_key(prefix))
    fixed = uuid.uuid4()
    raw.set(f"{prefix}:task:{fixed}", "not a hash")  # the record's script fails on it
    monkeypatch.setattr("taskstream.web.routes.uuid.uuid4", lambda: fixed)
    response = await post(app, x=1, y=1)
    assert response.status_code == 503
    assert (await response.get_json())["type"].endswith("store-unavailable")
    assert raw.llen(queue_key(prefix)) == 0


async def test_a_broker_in_another_database_is_pushed_to_apart(make_app, redis_url):
    broker_url = urlsplit(redis_url)._replace(path="/3").geturl()  # the same server, db 3
    app = await make_app(celery_broker_url=broker_url)
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    response = await post(app, x=1, y=1)
    assert response.status_code == 202
    assert svc.fast.enabled is True and svc.fast._broker is not None
    broker = redis.Redis.from_url(broker_url)
    try:
        queued = broker.lrange(queue_key(prefix), 0, -1)
    finally:
        broker.close()
    assert len(queued) == 1
    assert json.loads(queued[0])["headers"]["id"] == (await response.get_json())["id"]


async def test_scripts_lost_by_redis_are_loaded_again(make_app, raw):
    app = await make_app()
    svc = services_of(app)
    prefix = svc.settings.key_prefix
    assert (await post(app, x=1, y=1)).status_code == 202
    raw.script_flush()
    response = await post(app, x=1, y=2)
    assert response.status_code == 202
    assert (await response.get_json())["state"] == "PENDING"
    assert raw.llen(queue_key(prefix)) == 2


def test_a_worker_runs_what_the_web_pushed(service):
    snap = submit(service.url, "add", x=2, y=3)
    done = poll_until_done(service.url, snap["id"])
    assert done["state"] == "SUCCESS"
    assert done["result"] == 5
    # The whole log: the line is written once, at the first submission, and the shared
    # service's later requests push it out of a tail.
    assert "submissions publish to Redis directly" in service.webs[0].log_path.read_text()
