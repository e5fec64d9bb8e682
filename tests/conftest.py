"""Fixtures for the end-to-end tests; the processes and helpers they use are in harness.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PrivateRabbit, RedisServer, Service, rabbitmq_answers, redis_answers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url and redis_answers(url):
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The RabbitMQ at RABBITMQ_URL (default 127.0.0.1:5672, guest) when it answers, else a
    private rabbitmq-server (Debian's). Tests keep to queues and exchanges named by their prefix."""
    url = os.environ.get("RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672//"
    if rabbitmq_answers(url):
        yield url
        return
    server = PrivateRabbit(tmp_path_factory.mktemp("rabbitmq")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One web process and one worker (4 pool processes), shared by the session's tests."""
    svc = Service(redis_url, tmp_path_factory.mktemp("service"))
    try:
        svc.start_worker(concurrency=4)
        svc.start_web()
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def make_service(redis_url: str, tmp_path: Path) -> Iterator[object]:
    """A factory for a deployment of a test's own (its own prefix), for tests that break things."""
    made: list[Service] = []

    def make(**extra_env: str) -> Service:
        svc = Service(redis_url, tmp_path, extra_env=extra_env)
        made.append(svc)
        return svc

    try:
        yield make
    finally:
        for svc in made:
            svc.stop()
