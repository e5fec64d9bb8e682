"""Fixtures: real processes for end-to-end tests (started by harness.py), and the app in this
process (`app`, `make_app`) for HTTP behaviour that needs no socket, which is much faster.

Every deployment and app has a key prefix of its own, so tests may run in parallel processes
(`make test` runs two, pytest-xdist) against one Redis.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from taskstream.settings import Settings
from taskstream.web.app import create_app
from tests.harness import (
    CHROMIUM_ARGS,
    DESKTOP,
    PrivateRabbit,
    RedisServer,
    Service,
    new_prefix,
    rabbitmq_answers,
    redis_answers,
    require_chromium,
)


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
    with svc.running():
        yield svc


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


@pytest.fixture(scope="session")
async def app(redis_url: str) -> AsyncIterator[Quart]:
    """The web app in this process, started (Redis client, hub) but served without a socket:
    `app.test_client()`. Shared by the session; no worker runs its tasks (they stay queued)."""
    served = create_app(Settings.from_env(redis_url=redis_url, key_prefix=new_prefix()))
    async with served.test_app():
        yield served


@pytest.fixture
async def make_app(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[Quart]]]:
    """A factory for a started app of a test's own, with its own settings (field names)."""
    async with AsyncExitStack() as stack:

        async def make(**settings: Any) -> Quart:
            settings.setdefault("key_prefix", new_prefix())
            made = create_app(Settings.from_env(redis_url=redis_url, **settings))
            await stack.enter_async_context(made.test_app())
            return made

        yield make


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, one per test module (the dashboard tests' pages)."""
    from playwright import sync_api

    chromium = require_chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


# The dashboard's form is ready once the task types have arrived.
FORM_READY = "#submit-button:not([disabled])"


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Open a dashboard URL; fails the test if the page throws a script error. `ready`: what shows
    once the page has loaded what the test needs; `clock`: the page's timers run on Playwright's
    clock (tests move it with `page.clock`)."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(
        url: str,
        viewport: dict[str, int] = DESKTOP,
        init_script: str | None = None,
        clock: bool = False,
        ready: str = FORM_READY,
    ) -> Any:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        if clock:
            context.clock.install()
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector(ready)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors
