"""What every open stream costs the web process in memory, made smaller.

A stream is an open request, and an open request keeps the objects Hypercorn and Quart made for
it: at 10,000 streams every byte of them is 10 MB. The largest share was empty: asyncio's queue
and events each hold `collections.deque`s, and an empty deque takes 760 bytes. Hypercorn's queue
of ASGI messages (four of them), Quart's request body (two events) and Hypercorn's
can-read event held eight per stream, ~6 KB of its ~37. A short list does a deque's work for
the zero or one waiter these ever hold, at 56 bytes.

Also here: Quart's request handling without its second and third tasks, and the response
headers of streams shared between them (Hypercorn keeps each response's start message while it
runs).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, TypeVar

from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import EventWrapper, WorkerContext
from quart.asgi import ASGIHTTPConnection
from quart.utils import encode_headers
from quart.wrappers import Body, Request
from quart.wrappers.response import DataBody

T = TypeVar("T")


class Waiters(list[T]):
    """A deque's operations that asyncio's queue and event use, on a list. Taking from its
    front moves what is behind: fine for the few items these hold (Hypercorn's queue is bounded
    by its `max_app_queue_size`, 10), not for a queue of many."""

    __slots__ = ()

    def popleft(self) -> T:
        return self.pop(0)


# Each of these leaves alone what is not as it expects (another Python's or library's layout):
# the object then keeps its deque, and only the saving is lost.


def lean_event(event: asyncio.Event) -> asyncio.Event:
    """`event`, holding its waiters in a list (before anyone waits on it)."""
    waiters = getattr(event, "_waiters", None)
    if type(waiters) is collections.deque:
        event._waiters = Waiters(waiters)  # type: ignore[assignment]
    return event


def lean_queue(queue: asyncio.Queue[Any]) -> None:
    """`queue` holding its items and waiters in lists (its items kept, in order)."""
    for name in ("_queue", "_getters", "_putters"):
        held = getattr(queue, name, None)
        if type(held) is collections.deque:
            setattr(queue, name, Waiters(held))
    finished = getattr(queue, "_finished", None)
    if isinstance(finished, asyncio.Event):
        lean_event(finished)


class LeanBody(Body):
    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, max_content_length)
        lean_event(self._complete)
        lean_event(self._has_data)


class LeanRequest(Request):
    body_class = LeanBody


class LeanHTTPConnection(ASGIHTTPConnection):
    """Quart's handling of one HTTP request, the response written by the request's own task.

    Quart runs the handler in a task of its own beside the one that reads the client's messages,
    and the request's task waits for either; here the request's task runs the handler, and the
    reader, when it hears the client go away, cancels it (as Quart cancels its handler task).
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        request = self._create_request_from_scope(send)
        handler = asyncio.current_task()
        assert handler is not None
        receiver = asyncio.ensure_future(self.handle_messages(request, receive))
        gone = False

        def on_received_all(task: asyncio.Future[None]) -> None:
            nonlocal gone
            if not task.cancelled():
                gone = True
                handler.cancel()

        receiver.add_done_callback(on_received_all)
        try:
            await self.handle_request(request, shared_headers(send))
        except asyncio.CancelledError:
            if not gone:
                raise
            # Cancelled for the client leaving (here, or again by EndOnDisconnect): the request
            # is over, and ends as it does with Quart's own class.
            while handler.uncancel():
                pass
        finally:
            receiver.remove_done_callback(on_received_all)
            if not receiver.done():
                receiver.cancel()
        if receiver.done() and not receiver.cancelled() and receiver.exception() is not None:
            raise receiver.exception()  # type: ignore[misc]

    async def handle_request(self, request: Any, send: Any) -> None:
        """As Quart's, but the response's time limit is an `asyncio.timeout` in this task:
        `wait_for` (Python 3.11) runs the response in a task of its own, for every request. And
        an error is never made a traceback page (Quart does that in debug or testing mode)."""
        response = await self.app.handle_request(request)
        timeout = getattr(response, "timeout", Ellipsis)
        if timeout is Ellipsis:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        try:
            async with asyncio.timeout(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass

    async def _send_response(self, send: Any, response: Any) -> None:
        """A body already in memory (every JSON answer) goes in one message with the end of the
        response: Quart sends it and then an empty last one, each through every ASGI wrapper
        and h11 (~10% of a submission's HTTP time)."""
        body = getattr(response, "response", None)
        if type(body) is not DataBody:
            await super()._send_response(send, response)
            return
        await send({
            "type": "http.response.start",
            "status": response.status_code,
            "headers": encode_headers(response.headers),
        })  # fmt: skip
        await send({
            "type": "http.response.body", "body": body.data[body.begin : body.end],
            "more_body": False,
        })  # fmt: skip


# Header pairs of responses, shared: a stream's are the same as every other stream's.
_PAIRS: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
_MAX_PAIRS = 512


def shared_headers(send: Any) -> Any:
    """`send`, giving each response's start the header pairs already known (Hypercorn keeps the
    message for as long as the response lasts, 1.1 KB a stream with pairs of its own)."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers")
            if headers:
                message["headers"] = [_shared(pair) for pair in headers]
        await send(message)

    return sending


def _shared(pair: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    known = _PAIRS.get(pair)
    if known is not None:
        return known
    # Values that differ per response (a length, a cookie) fill the table, which then stops
    # growing: what it holds is still shared.
    if len(_PAIRS) < _MAX_PAIRS:
        _PAIRS[pair] = pair
    return pair


class LeanEventWrapper(EventWrapper):
    def __init__(self) -> None:
        super().__init__()
        event = getattr(self, "_event", None)
        if isinstance(event, asyncio.Event):
            lean_event(event)


_spawn_app = TaskGroup.spawn_app


async def _lean_spawn_app(self: TaskGroup, *args: Any) -> Any:
    put = await _spawn_app(self, *args)
    queue = getattr(put, "__self__", None)
    if isinstance(queue, asyncio.Queue):
        lean_queue(queue)
    return put


def install() -> None:
    """Hypercorn's per-connection and per-request objects, made lean (before serving)."""
    WorkerContext.event_class = LeanEventWrapper
    TaskGroup.spawn_app = _lean_spawn_app  # type: ignore[method-assign, assignment]
