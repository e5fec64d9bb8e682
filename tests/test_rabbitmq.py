"""RabbitMQ as Celery's broker (CELERY_BROKER_URL) while Redis keeps the record and its pub/sub:
submit, follow, cancel and retry behave as they do on Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from tests.harness import Service, poll_until_done, read_stream, submit
from tests.test_cancel import wait_for_state


def states(events: list[tuple[int, dict]]) -> list[str]:
    return [snap["state"] for _, snap in events]


@pytest.fixture
def on_rabbit(make_service, rabbitmq_url: str) -> Iterator[Service]:
    svc: Service = make_service(CELERY_BROKER_URL=rabbitmq_url)
    svc.start_worker(concurrency=1)
    svc.start_web()
    try:
        yield svc
    finally:
        svc.stop()
        forget(rabbitmq_url, svc.prefix)


def forget(url: str, prefix: str) -> None:
    """Delete what this deployment declared on the shared broker (all named by its prefix)."""
    with Connection(url) as conn:
        for queue in (f"{prefix}.tasks",):
            conn.default_channel.queue_delete(queue)
        for exchange in (f"{prefix}.tasks", f"{prefix}.control.pidbox", f"{prefix}.celeryev",
                         f"reply.{prefix}.control.pidbox"):  # fmt: skip
            conn.default_channel.exchange_delete(exchange)


def test_tasks_travel_over_rabbitmq_and_changes_over_redis(on_rabbit, rabbitmq_url):
    snap = submit(on_rabbit.url, "add", x=2, y=3)
    events = read_stream(on_rabbit.url, snap["id"], query="?last_event_id=0")
    assert states(events) == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    assert events[-1][1]["result"] == 5
    # The message went through RabbitMQ: the queue is there, and Redis holds no Celery keys.
    with Connection(rabbitmq_url) as conn:
        declared = conn.default_channel.queue_declare(f"{on_rabbit.prefix}.tasks", passive=True)
        assert declared.queue == f"{on_rabbit.prefix}.tasks"
    client = redis.Redis.from_url(on_rabbit.redis_url)
    try:
        assert list(client.scan_iter(f"{on_rabbit.prefix}:celery:*", count=1000)) == []
        assert client.llen(f"{on_rabbit.prefix}.tasks") == 0
    finally:
        client.close()


def test_retries_over_rabbitmq(on_rabbit):
    snap = submit(on_rabbit.url, "flaky", failures=2)
    events = read_stream(on_rabbit.url, snap["id"], query="?last_event_id=0")
    assert states(events) == [
        "PENDING", "RECEIVED", "STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS",
    ]  # fmt: skip
    assert events[-1][1]["result"] == "ok"


def test_cancel_reaches_the_worker_over_rabbitmq(on_rabbit):
    import httpx

    # One step of 30 s: the task never checks in, so only the revoke broadcast, carried by
    # RabbitMQ to the worker, can stop it and free the worker's only pool process.
    running = submit(on_rabbit.url, "sleep", seconds=30, steps=1)
    wait_for_state(on_rabbit.url, running["id"], "STARTED")
    response = httpx.delete(f"{on_rabbit.url}/tasks/{running['id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "REVOKED"
    events = read_stream(on_rabbit.url, running["id"], query="?last_event_id=0")
    assert states(events)[-1] == "REVOKED"

    after = submit(on_rabbit.url, "add", x=1, y=1)
    assert poll_until_done(on_rabbit.url, after["id"], timeout=20)["result"] == 2
