"""POST /tasks's publish when Celery's broker is Redis: Celery's own message, kombu's own envelope,
pushed by the web's asyncio client together with the record's creation.

Celery's publish is synchronous and costs about a millisecond of CPU in kombu (most of it in the
connection and channel machinery around one LPUSH), on a thread of the web's pool. Here the message
is made exactly as `Task.apply_async` would make it (the task's options, the app's router, so task
routes and queues are honoured) and wrapped by a kombu channel of the app's own transport, whose
`_put` is only captured: the envelope (body encoding, delivery tag, delivery info, priority queue,
global key prefix) is kombu's. The push is then one script call with the record's creation when the
broker is the record's Redis, else two awaits.

`before_task_publish` and `after_task_publish` are sent with the arguments Celery gives them, so
a project's own hooks see these submissions; taskstream's own handler leaves the record to this
module (one record, made once). Anything this path cannot reproduce faithfully (another broker, an
exchange other than the default one, per-message expiry, sent events, eager mode, a task sent from
inside a task, a task class or app with its own `apply_async` or `send_task`) goes Celery's normal
way: `submit` answers None and the caller falls back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from celery import Celery, Task, signals
from kombu import Producer
from kombu.common import Broadcast, maybe_declare
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as kombu_dumps
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from taskstream import connections
from taskstream.backend import RecordBackend
from taskstream.record import AsyncRecorder, Outcome
from taskstream.recording import NotQueued, recording_here, submission_headers, tracking
from taskstream.settings import Settings, redis_tls_options
from taskstream.signals import publish_creation

log = logging.getLogger(__name__)

# After the broker could not be opened, submissions take Celery's path for this long.
_REOPEN_SECONDS = 5.0


@dataclass
class _Sent:
    """One message as Celery's send_task_message would publish it."""

    name: str
    body: Any
    headers: dict[str, Any]
    properties: dict[str, Any]
    exchange: str
    routing_key: str
    declare: list[Any]
    retry_policy: dict[str, Any]
    publish_kwargs: dict[str, Any]


@dataclass
class _Envelope:
    queue: str
    key: str
    payload: str
    expire_keys: list[str]
    expires_ms: int | None


def _same_target(settings: Settings, app: Celery) -> bool | None:
    """Whether the broker is the record's Redis (True), another Redis we can reach (False), or
    one this module does not handle (None)."""
    broker = str(app.conf.broker_url or "")
    if settings.redis_sentinels:
        # Only taskstream's own Sentinel broker, which is the record's master by construction.
        return True if broker == connections.broker(settings)[0] else None
    scheme = urlsplit(broker).scheme
    if scheme not in ("redis", "rediss"):
        return None
    if app.conf.broker_use_ssl and app.conf.broker_use_ssl != redis_tls_options(broker):
        return None
    if broker == settings.redis_url:
        return True

    def target(url: str) -> tuple[Any, ...]:
        o = parse_url(url)
        return (urlsplit(url).scheme, o.get("host"), o.get("port", 6379), o.get("db", 0),
                o.get("username"), o.get("password"), o.get("path"))  # fmt: skip

    return target(broker) == target(settings.redis_url)


class FastPublisher:
    """The Redis fast path of one web process's submissions (see the module's docstring)."""

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        record: AsyncRecorder,
        client: Any,
        off_loop: Callable[..., Any],
    ):
        self.app = app
        self.settings = settings
        self.record = record
        self.client = client
        self._off_loop = off_loop
        # None: not tried yet; False: this app's broker takes the normal path.
        self.enabled: bool | None = None
        self.reason = ""
        self._connection: Any = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._broker: Any = None
        self._same = False
        self._declared: set[Any] = set()
        self._captured: list[tuple[str, dict[str, Any]]] = []
        self._opening = asyncio.Lock()
        self._retry_open_at = 0.0

    # Setting up ---------------------------------------------------------------------------------

    def _open(self) -> None:
        """On a pool thread: the app's transport, and a channel of its own to wrap messages."""
        app = self.app
        if app.conf.task_always_eager:
            self._disable("task_always_eager")
            return
        same = _same_target(self.settings, app)
        if same is None:
            self._disable("the broker is not a Redis this path handles")
            return
        conn = app.connection_for_write()
        if not isinstance(conn.transport, kombu_redis.Transport):
            conn.release()
            self._disable(f"the broker's transport is {type(conn.transport).__name__}")
            return
        try:
            # Once, not kombu's retry-forever: a broker that is away leaves this submission (and
            # those of the next seconds) to Celery's own path, which answers for it.
            conn.ensure_connection(max_retries=0)
            channel = conn.default_channel
        except Exception:
            conn.release()
            raise
        # kombu's own envelope, captured where the Redis transport would LPUSH it.
        channel._put = self._capture
        self._connection, self._channel, self._same = conn, channel, same
        self._producer = Producer(channel, auto_declare=False)
        if not same:
            self._broker = aioredis.Redis.from_url(
                str(app.conf.broker_url),
                socket_connect_timeout=5,
                socket_timeout=10,
                socket_keepalive=True,
                health_check_interval=15,
            )
        self.enabled = True
        log.info("submissions publish to Redis directly (%s)",
                 "with the record" if same else "beside the record")  # fmt: skip

    def _disable(self, reason: str) -> None:
        self.enabled, self.reason = False, reason
        log.info("submissions publish through Celery: %s", reason)

    def _capture(self, queue: str, message: dict[str, Any], **_: Any) -> None:
        self._captured.append((queue, message))

    async def close(self) -> None:
        if self._broker is not None:
            await self._broker.aclose()
        if self._connection is not None:
            conn, self._connection = self._connection, None
            await self._off_loop(conn.release)

    # The message --------------------------------------------------------------------------------

    def _message(
        self, task: Any, task_id: str, kwargs: dict[str, Any], headers: dict[str, Any]
    ) -> _Sent | None:
        """What `task.apply_async(kwargs=kwargs, task_id=task_id, headers=headers)` would hand
        send_task_message, or None where this path would not send it as Celery does."""
        app = self.app
        conf = app.conf
        if (
            type(task).apply_async is not Task.apply_async
            or type(app).send_task is not Celery.send_task
        ):
            # A project's own apply_async (headers for tenants or tracing, de-duplication) or
            # send_task: only calling it does what it does.
            return None
        # Task.apply_async
        if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
            return None  # Celery's own path raises its error
        if task.__v2_compat__ or task._dump_pydantic_arguments is not None:
            return None
        if conf.task_always_eager or conf.task_send_sent_event:
            return None
        args = None
        if task.typing:
            check = getattr(task, "__header__", None)
            if check is not None:
                check(**kwargs)
        options: dict[str, Any] = {"headers": headers}
        shadow = task.shadow_name(args, kwargs, options)
        options = dict(task._get_exec_options(), **options)
        options.setdefault("ignore_result", task.ignore_result)
        # Celery.send_task
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        expires = options.pop("expires", None)
        if expires is not None:
            return None
        ignore_result = options.pop("ignore_result", None)
        options = app.amqp.router.route(options, task.name, args, kwargs, task)
        if app.current_worker_task is not None:
            return None
        message = app.amqp.create_task_message(
            task_id, task.name, args, kwargs, None, None, None, None,
            expires, 0, None, None, None,
            app.thread_oid, time_limit, soft_time_limit,
            conf.task_send_sent_event,
            None, None, shadow, None,
            ignore_result=ignore_result, replaced_task_nesting=0, **options,
        )  # fmt: skip
        for stamp in options.pop("stamped_headers", []):
            options.pop(stamp)
        if not ignore_result and type(app.backend).on_task_call is not RecordBackend.on_task_call:
            return None  # another backend's on_task_call is Celery's path to run
        return self._sent(task.name, message, **options)

    def _sent(
        self,
        name: str,
        message: Any,
        exchange: Any = None,
        routing_key: str | None = None,
        queue: Any = None,
        event_dispatcher: Any = None,
        retry: bool | None = None,
        retry_policy: dict[str, Any] | None = None,
        serializer: str | None = None,
        delivery_mode: Any = None,
        compression: str | None = None,
        declare: list[Any] | None = None,
        headers: dict[str, Any] | None = None,
        exchange_type: str | None = None,
        timeout: float | None = None,
        confirm_timeout: float | None = None,
        **kwargs: Any,
    ) -> _Sent | None:
        """celery.app.amqp's send_task_message up to its publish (Celery 5.x)."""
        amqp = self.app.amqp
        conf = self.app.conf
        headers2, properties, body, sent_event = message
        if sent_event:
            return None
        if headers:
            headers2.update(headers)
        if kwargs:
            properties.update(kwargs)
        qname = queue
        if queue is None and exchange is None:
            queue = amqp.default_queue
        if queue is not None:
            if isinstance(queue, str):
                qname, queue = queue, amqp.queues[queue]
            else:
                qname = queue.name
        if delivery_mode is None:
            try:
                delivery_mode = queue.exchange.delivery_mode
            except AttributeError:
                pass
            delivery_mode = delivery_mode or conf.task_default_delivery_mode
        if exchange_type is None:
            try:
                exchange_type = queue.exchange.type
            except AttributeError:
                exchange_type = "direct"
        if (not exchange or not routing_key) and exchange_type == "direct":
            exchange, routing_key = "", qname
        else:
            # A named exchange: kombu looks its bindings up in Redis; Celery's path does that.
            return None
        if declare is None and queue and not isinstance(queue, Broadcast):
            declare = [queue]
        retry = conf.task_publish_retry if retry is None else retry
        default_policy = conf.task_publish_retry_policy
        rp = dict(default_policy, **retry_policy) if retry_policy else dict(default_policy)
        publish_kwargs = dict(
            exchange=exchange,
            routing_key=routing_key,
            serializer=serializer or conf.task_serializer,
            compression=compression or conf.task_compression,
            retry=retry,
            retry_policy=rp,
            delivery_mode=delivery_mode,
            declare=declare,
            headers=headers2,
            timeout=timeout,
            confirm_timeout=confirm_timeout,
            **properties,
        )
        declared = list(declare or ())
        return _Sent(name, body, headers2, properties, exchange, str(routing_key), declared, rp,
                     publish_kwargs)  # fmt: skip

    def _envelope(self, sent: _Sent) -> _Envelope | None:
        """kombu's Producer.publish and the Redis channel's basic_publish, `_put` captured."""
        assert self._producer is not None
        channel = self._channel
        self._captured.clear()
        # Celery's publish arguments, but nothing declared or retried here: the declarations were
        # made (once, as maybe_declare does) and redis-py retries the push.
        self._producer.publish(sent.body, **dict(sent.publish_kwargs, retry=False, declare=[]))
        if len(self._captured) != 1:
            return None
        queue, message = self._captured[0]
        self._captured.clear()
        prefix = channel.global_keyprefix
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        expires = channel._expires.get(queue) if channel._expires else None
        expire_keys = (
            [prefix + channel._q_for_pri(queue, p) for p in channel.priority_steps]
            if expires
            else []
        )
        return _Envelope(queue, prefix + key, kombu_dumps(message), expire_keys, expires)

    # Submitting --------------------------------------------------------------------------------

    async def submit(
        self, task: Any, task_id: str, kwargs: dict[str, Any], owner: str, rerun_of: str | None
    ) -> Outcome | None:
        """Send one task as recording.submit does; None when it must go Celery's normal way."""
        if self.enabled is None:
            if time.monotonic() < self._retry_open_at:
                return None
            async with self._opening:
                if self.enabled is None:
                    try:
                        await self._off_loop(self._open)
                    except Exception as exc:
                        # Celery's path sends this one (or answers queue-unavailable).
                        self._retry_open_at = time.monotonic() + _REOPEN_SECONDS
                        log.warning("no direct submissions yet, the broker: %s", type(exc).__name__)
                        return None
        if not self.enabled:
            return None
        sent = self._message(task, task_id, kwargs, submission_headers(owner, rerun_of))
        if sent is None:
            return None
        for entity in sent.declare:
            if entity not in self._declared:
                # Once per queue and process, as kombu's maybe_declare (its binding, its expiry).
                try:
                    await self._off_loop(maybe_declare, entity, self._channel)
                except Exception as exc:
                    log.warning("could not declare %s: %s", entity, type(exc).__name__)
                    return None
                self._declared.add(entity)
        token = recording_here.set(task_id)
        try:
            signals.before_task_publish.send(
                sender=sent.name, body=sent.body,
                exchange=sent.exchange, routing_key=sent.routing_key,
                declare=sent.declare, headers=sent.headers,
                properties=sent.properties, retry_policy=sent.retry_policy,
            )  # fmt: skip
        finally:
            recording_here.reset(token)
        envelope = self._envelope(sent)
        if envelope is None:
            raise RuntimeError(f"kombu delivered {task.name} to no single queue")
        change = publish_creation(
            tracking(self.app), sent.name, sent.body, sent.routing_key, sent.headers
        )
        if self._same and not self.record.min_replicas:
            outcome, refused = await self.record.record_and_push(
                change, [envelope.key, *envelope.expire_keys], envelope.payload, envelope.expires_ms
            )
            if refused is not None:
                raise NotQueued(outcome) from RedisError(refused)
        else:
            outcome = await self.record.record(change)
            try:
                await self._push_only(envelope)
            except Exception as exc:
                raise NotQueued(outcome) from exc
        signals.after_task_publish.send(
            sender=sent.name, body=sent.body, headers=sent.headers,
            exchange=sent.exchange, routing_key=sent.routing_key,
        )  # fmt: skip
        return outcome

    async def _push_only(self, envelope: _Envelope) -> None:
        client = self._broker if self._broker is not None else self.client
        if not envelope.expire_keys:
            await client.lpush(envelope.key, envelope.payload)
            return
        async with client.pipeline(transaction=False) as pipe:
            pipe.lpush(envelope.key, envelope.payload)
            for key in envelope.expire_keys:
                pipe.pexpire(key, envelope.expires_ms)
            await pipe.execute()
