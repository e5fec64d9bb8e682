"""The lean stand-ins for asyncio's deques behave as the queue and event they sit in expect."""

from __future__ import annotations

import asyncio
import contextlib

from taskstream.web import lean


async def test_a_lean_queue_keeps_its_items_in_order_and_wakes_its_getter():
    queue: asyncio.Queue[int] = asyncio.Queue(3)
    queue.put_nowait(1)  # before it is made lean: kept
    lean.lean_queue(queue)
    assert await queue.get() == 1
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    await queue.put(2)
    assert await asyncio.wait_for(getter, 1) == 2
    for n in (3, 4, 5):
        queue.put_nowait(n)
    putter = asyncio.ensure_future(queue.put(6))  # full: waits for room
    await asyncio.sleep(0)
    assert not putter.done()
    assert [await queue.get() for _ in range(3)] == [3, 4, 5]
    await asyncio.wait_for(putter, 1)
    assert queue.get_nowait() == 6


async def test_a_cancelled_getter_of_a_lean_queue_leaves_the_item_to_the_next():
    queue: asyncio.Queue[str] = asyncio.Queue()
    lean.lean_queue(queue)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    queue.put_nowait("only")
    assert await asyncio.wait_for(second, 1) == "only"


async def test_a_lean_event_wakes_every_waiter_and_can_be_waited_again():
    event = lean.lean_event(asyncio.Event())
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    event.clear()
    again = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0.01)
    assert not again.done()
    event.set()
    assert await asyncio.wait_for(again, 1)


async def test_response_header_pairs_are_shared_and_the_table_is_bounded(monkeypatch):
    monkeypatch.setattr(lean, "_PAIRS", {})
    monkeypatch.setattr(lean, "_MAX_PAIRS", 3)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    sending = lean.shared_headers(send)
    for length in (b"1", b"2", b"3"):
        headers = [(b"content-type", b"text/event-stream"), (b"content-length", length)]
        await sending({"type": "http.response.start", "status": 200, "headers": headers})
    await sending({"type": "http.response.body", "body": b"x"})
    first, second, third = (m["headers"] for m in sent[:3])
    assert first[0] is second[0] is third[0]
    assert [pair[1] for pair in (first[1], second[1], third[1])] == [b"1", b"2", b"3"]
    assert len(lean._PAIRS) == 3  # the third length was not kept
    assert sent[3] == {"type": "http.response.body", "body": b"x"}


async def test_a_lean_request_body_is_read_whole():
    body = lean.LeanBody(None, None)
    body.append(b"ab")
    body.append(b"cd")
    body.set_complete()
    assert await body == b"abcd"


async def test_an_answer_already_in_memory_goes_out_whole_with_the_end_of_the_response(app):
    messages: list[dict] = []
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/healthz", "raw_path": b"/healthz", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80), "extensions": {},
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert messages[0]["status"] == 200
    body = messages[1]["body"]
    assert messages[1]["more_body"] is False and body.startswith(b"{")
    length = dict(messages[0]["headers"])[b"content-length"]
    assert int(length) == len(body)
