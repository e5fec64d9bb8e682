"""The submission limit, in-process against a real Redis, on the app's own clock: a window opens
and closes when the test says, not after a wait."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from taskstream.web.services import services


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


TOKENS = {
    "flood": "flood-token-4444-0123456789abcdef01",
    "bob": "bob-token-2222-0123456789abcdef0123",
}


Submit = Callable[..., Awaitable[tuple[int, str | None]]]


async def limited(make_app: Any, now: float) -> tuple[Clock, Submit]:
    """An app allowing each caller 5 submissions a minute, on a clock at `now`, and a way to
    submit as a caller: its status and Retry-After."""
    app = await make_app(
        api_tokens=",".join(f"{name}:{token}" for name, token in TOKENS.items()),
        secret_key="s" * 32,
        rate_limit_per_minute=5,
        rate_limit_window_seconds=60,
    )
    clock = Clock(now)
    async with app.app_context():
        services().clock = clock
    client = app.test_client()

    async def submit(who: str = "flood") -> tuple[int, str | None]:
        response = await client.post(
            "/tasks",
            json={"task": "add", "args": [1, 1]},
            headers={"Authorization": f"Bearer {TOKENS[who]}"},
        )
        return response.status_code, response.headers.get("Retry-After")

    return clock, submit


async def test_a_flood_of_submissions_is_limited_and_recovers_in_the_next_window(make_app):
    clock, submit = await limited(make_app, 6_000_000.0)  # the start of a window
    answers = [await submit() for _ in range(5)]
    assert [status for status, _ in answers] == [202] * 5
    clock.now += 45
    status, retry_after = await submit()
    assert (status, retry_after) == (429, "15")  # the window's remaining seconds
    assert (await submit("bob"))[0] == 202  # another caller is not held up
    clock.now += 15
    assert (await submit())[0] == 202


async def test_no_limit_unless_configured(make_app):
    app = await make_app(rate_limit_per_minute=0)
    client = app.test_client()
    for _ in range(20):
        response = await client.post("/tasks", json={"task": "add", "args": [1, 1]})
        assert response.status_code == 202


async def test_no_double_burst_across_a_window_edge(make_app):
    # A second before a fixed window would have reset.
    clock, submit = await limited(make_app, 6_000_059.0)
    assert [(await submit())[0] for _ in range(5)] == [202] * 5
    clock.now += 2  # past the fixed window's edge: still within the last 60 s
    assert [(await submit())[0] for _ in range(5)] == [429] * 5
    clock.now += 58  # the first five leave the window
    assert (await submit())[0] == 202
