"""The event record: every change of a task gets the next `seq`, is stored and announced at once.

One Lua script does the whole step inside Redis, so no reader can ever see a stored change that
was not announced, or an announcement whose change is not stored, and two processes changing the
same task can never hand out the same `seq`. The web process (submission, cancel) and the worker
(every Celery signal, the progress helper) both record through this module.

A task lives in a hash whose values are JSON texts. The script builds the snapshot JSON by joining
those texts, so numbers and strings reach clients exactly as Python encoded them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.exceptions import RedisError

from taskstream.keys import Keys
from taskstream.states import TaskState, lua_terminal_check

if TYPE_CHECKING:
    from taskstream.pipelined import Pipelined

# The snapshot's fields, in the order clients see them.
SNAPSHOT_FIELDS = (
    "id",
    "task",
    "state",
    "seq",
    "progress",
    "result",
    "error",
    "retries",
    "submitted_at",
    "started_at",
    "finished_at",
    "updated_at",
)

_LUA_SNAPSHOT = (
    "local FIELDS = {"
    + ",".join(f"'{name}'" for name in SNAPSHOT_FIELDS)
    + """}
local function snapshot(key)
  local vals = redis.call('HMGET', key, unpack(FIELDS))
  local parts = {}
  for i, name in ipairs(FIELDS) do
    parts[i] = '"' .. name .. '":' .. (vals[i] or 'null')
  end
  return '{' .. table.concat(parts, ',') .. '}'
end
"""
)

# What the dashboard shows beside the snapshot, stored in the same hash but never part of a
# snapshot (each a JSON text; `children` is a set of its own, see Keys.children).
DETAIL_FIELDS = (
    "args",
    "kwargs",
    "queue",
    "parent_id",
    "root_id",
    "group_id",
    "eta",
    "worker",
    "runtime",
    "rerun_of",
)

# KEYS: task hash, task log, global counter, global log, recent index, and on creation the
#       parent's children set when the task has a parent.
# ARGV: channel, ttl, retain, global retain, mode, score, n_set, retries guard ('' for none), the
#       task's own channel, the change's Unix time, then n_set field/value pairs to set, then
#       field/value pairs to set only where absent.
_LUA_RECORD = (
    _LUA_SNAPSHOT
    + """
local task_key, log_key, gseq_key = KEYS[1], KEYS[2], KEYS[3]
local glog_key, recent_key = KEYS[4], KEYS[5]
local channel, ttl, retain, gretain, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local exists = redis.call('EXISTS', task_key) == 1
if mode == 'create' then
  if exists then return {2, snapshot(task_key)} end
else
  if not exists then return {0, false} end
  local state = redis.call('HGET', task_key, 'state')
  if """
    + lua_terminal_check("state")
    + """ then
    return {3, snapshot(task_key)}
  end
  local retries = tonumber(redis.call('HGET', task_key, 'retries') or '0')
  if ARGV[8] ~= '' and retries >= tonumber(ARGV[8]) then
    return {4, snapshot(task_key)}
  end
end
local i = 11
local stop = 11 + 2 * tonumber(ARGV[7])
while i < stop do
  redis.call('HSET', task_key, ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSETNX', task_key, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local new_state = redis.call('HGET', task_key, 'state')
local started = redis.call('HGET', task_key, 'started_ts')
if started and ("""
    + lua_terminal_check("new_state")
    + """) then
  -- How long the latest attempt ran, measured from its STARTED to this terminal change.
  local runtime = math.max(0, tonumber(ARGV[10]) - tonumber(started))
  redis.call('HSET', task_key, 'runtime', string.format('%.6f', runtime))
end
local seq = redis.call('HINCRBY', task_key, 'seq', 1)
local data = snapshot(task_key)
redis.call('EXPIRE', task_key, ttl)
redis.call('XADD', log_key, 'MAXLEN', '~', retain, seq .. '-0', 'd', data)
redis.call('EXPIRE', log_key, ttl)
local g = redis.call('INCR', gseq_key)
redis.call('XADD', glog_key, 'MAXLEN', '~', gretain, g .. '-0', 'd', data, 'o',
  redis.call('HGET', task_key, 'owner') or '""', 't', redis.call('HGET', task_key, 'id'))
if mode == 'create' then
  local score = tonumber(ARGV[6])
  redis.call('ZADD', recent_key, score, cjson.decode(redis.call('HGET', task_key, 'id')))
  redis.call('ZREMRANGEBYSCORE', recent_key, '-inf', score - tonumber(ttl))
  if KEYS[6] then
    redis.call('SADD', KEYS[6], cjson.decode(redis.call('HGET', task_key, 'id')))
    redis.call('EXPIRE', KEYS[6], ttl)
  end
end
local header = g .. ' ' .. seq .. ' ' .. redis.call('HGET', task_key, 'id') .. ' '
  .. redis.call('HGET', task_key, 'state') .. ' ' .. (redis.call('HGET', task_key, 'owner') or '""')
local message = header .. '\\n' .. data
-- The task's channel reaches the web processes streaming this task; the common one, those with a
-- `GET /events` open. A channel nobody listens to costs Redis next to nothing.
redis.call('PUBLISH', ARGV[9], message)
redis.call('PUBLISH', channel, message)
return {1, data, g}
"""
)

# The record's script (the one way a record is made), then a push onto a list (a Redis broker's
# queue: tasks/fast_publish.py), in one atomic call. The push only when the record was created now
# (not when it existed: a call redis-py repeats after a lost answer pushes nothing twice). The
# last ARGV is how many KEYS the record takes; the KEYS after those are the list, then, with an
# expiry, every list to expire with it; the two ARGV before it are the message and the expiry
# ('' for none). A push Redis refuses is answered as a fourth element, the record kept.
_LUA_RECORD_AND_PUSH = (
    """
local n_keys = tonumber(table.remove(ARGV))
local expires = table.remove(ARGV)
local payload = table.remove(ARGV)
local push_keys = {}
for i = n_keys + 1, #KEYS do push_keys[#push_keys + 1] = KEYS[i] end
for i = #KEYS, n_keys + 1, -1 do KEYS[i] = nil end
local function record()
"""
    + _LUA_RECORD
    + """
end
local r = record()
if r[1] ~= 1 then return r end
local pushed = redis.pcall('LPUSH', push_keys[1], payload)
if type(pushed) == 'table' and pushed.err then return {r[1], r[2], r[3], pushed.err} end
if expires ~= '' then
  for i = 2, #push_keys do redis.call('PEXPIRE', push_keys[i], expires) end
end
return r
"""
)

# A record made ahead of its message (a chain's later step, a chord's body: `ahead` is set), when
# the message is sent: what the message says (the previous step's result among the arguments, the
# parent) replaces what was known ahead. Not a change: none of it is in the snapshot.
# KEYS: task hash, then the parent's children set when the message names a parent.
# ARGV: ttl, then field/value pairs. Returns 1 when filled, 0 when the record was not made ahead.
_LUA_FILL_AHEAD = """
if redis.call('HGET', KEYS[1], 'ahead') ~= 'true' then return 0 end
redis.call('HDEL', KEYS[1], 'ahead')
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if KEYS[2] then
  redis.call('SADD', KEYS[2], cjson.decode(redis.call('HGET', KEYS[1], 'id')))
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return 1
"""

# KEYS: task hashes. Returns each one's snapshot, or false where it is unknown.
_LUA_READ = (
    _LUA_SNAPSHOT
    + """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then out[i] = snapshot(key) else out[i] = false end
end
return out
"""
)


def utcnow() -> str:
    """The moment of a change, in UTC with microseconds, as the contract spells it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# One encoder for every call: json.dumps with any non-default option builds an encoder per call
# (a change's record encodes each of its ~14 fields).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder()


def dumps(value: Any) -> str:
    # One line always: json escapes newlines inside strings, so nothing in a task's output can
    # break the SSE framing. NaN and Infinity are not JSON and are refused.
    return _ENCODER.encode(value)


def jsonable(value: Any) -> Any:
    """`value` as JSON a client reads: what Celery's JSON serializer takes beyond JSON (dates and
    times, UUIDs, decimals, bytes) as the strings it writes them as, a tuple as a list, NaN and
    Infinity (not JSON) as null. Anything else that is not JSON raises TypeError."""
    try:
        dumps(value)
        return value
    except (TypeError, ValueError):
        return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        return {_plain_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _plain_key(key: Any) -> Any:
    if key is None or isinstance(key, str | int | float):
        return key  # json writes these as strings itself
    plain = _plain(key)
    if isinstance(plain, str):
        return plain
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


class Status(IntEnum):
    UNKNOWN = 0
    RECORDED = 1
    EXISTS = 2
    TERMINAL = 3
    # Refused by `Change.only_if_retries_below`: a later attempt is already recorded.
    SUPERSEDED = 4


@dataclass(frozen=True)
class Change:
    """One change to a task: fields to set, and fields to set only if the task has none yet."""

    task_id: str
    set: dict[str, Any]
    set_if_absent: dict[str, Any] = field(default_factory=dict)
    create: bool = False
    # Creation time as a Unix timestamp, for the recent-tasks index.
    score: float = 0.0
    # Stamped by the process that makes the change, as the contract asks.
    at: str = field(default_factory=utcnow)
    # Record only while the task's `retries` is below this: keeps RETRY before the next STARTED
    # whichever of the two processes involved gets to Redis first.
    only_if_retries_below: int | None = None
    # On creation: the task that sent this one, whose children set it joins.
    parent_id: str | None = None
    # The same moment as `at`, as a Unix time: the runtime of a terminal change is measured with
    # it against the `started_ts` its STARTED change stored.
    clock: float = field(default_factory=time.time)


def ending(task_id: str, fields: dict[str, Any]) -> Change:
    """The change that ends a task with `fields` (its terminal state and what goes with it): one
    reading of the clock, so that its `finished_at` is its `updated_at`."""
    now = utcnow()
    return Change(task_id, {**fields, "finished_at": now}, at=now)


@dataclass(frozen=True)
class Outcome:
    status: Status
    # The snapshot after the change (RECORDED), or as it stands (EXISTS, TERMINAL).
    data: str | None
    global_seq: int | None = None

    @property
    def snapshot(self) -> dict[str, Any] | None:
        return None if self.data is None else json.loads(self.data)


class Header(NamedTuple):
    """What an announcement says before its snapshot, so a subscriber routes it unparsed. (A
    named tuple: every web process makes one per change it hears, and a frozen dataclass takes
    more than twice as long to build.)"""

    global_seq: int
    seq: int
    task_id: str
    state: str
    owner: str


def split_announcement(message: str) -> tuple[Header, str]:
    """An announcement as published by the record script: its header, and the snapshot JSON.

    The header's strings are JSON; where none holds a space or an escape (nearly always) they are
    read by stripping their quotes, without a JSON parser: every web process does this once per
    change it hears. A task id or a custom state may hold either: then they are decoded whole.
    """
    header, data = message.split("\n", 1)
    if header.count(" ") == 4 and "\\" not in header:
        g, seq, task_id, state, owner = header.split(" ", 4)
        return Header(int(g), int(seq), task_id[1:-1], state[1:-1], owner[1:-1]), data
    g, seq, rest = header.split(" ", 2)
    strings = []
    at = 0
    for _ in range(3):
        value, at = _DECODER.raw_decode(rest, at)
        strings.append(value)
        at += 1  # the space between them
    task_id, state, owner = strings
    return Header(int(g), int(seq), task_id, state, owner), data


def new_task_fields(
    task_id: str, task: str, now: str, owner: str = "", extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The fields of a task that was just accepted: PENDING, nothing else known yet."""
    # Fields not known yet are left absent (they read as null), so `set_if_absent` can fill them.
    fields = {
        "id": task_id,
        "task": task,
        "state": TaskState.PENDING,
        "retries": 0,
        "submitted_at": now,
        "owner": owner,
    }
    fields.update(extra or {})
    return fields


class NotReplicated(RedisError):
    """The change is recorded on the master, but fewer replicas than asked have confirmed it."""


class _Base:
    """What both recorders share. `client` must decode responses (decode_responses=True).

    With `min_replicas`, a change is acknowledged only once that many replicas have it (Redis
    WAIT on the same connection, so it covers exactly this write); else NotReplicated.
    """

    def __init__(
        self,
        client: Any,
        keys: Keys,
        ttl: int,
        retain: int,
        global_retain: int,
        *,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1_000,
    ):
        self.client = client
        self.keys = keys
        self._ttl = ttl
        self._retain = retain
        self._global_retain = global_retain
        self.min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms
        self._record = client.register_script(_LUA_RECORD)
        self._record_and_push = client.register_script(_LUA_RECORD_AND_PUSH)
        self._read = client.register_script(_LUA_READ)
        self._fill_ahead = client.register_script(_LUA_FILL_AHEAD)

    def _record_call(self, change: Change) -> tuple[list[str], list[Any]]:
        keys = self.keys
        tid = change.task_id
        to_set = {**change.set, "updated_at": change.at}
        args: list[Any] = [
            keys.channel,
            self._ttl,
            self._retain,
            self._global_retain,
            "create" if change.create else "update",
            repr(change.score),
            len(to_set),
            "" if change.only_if_retries_below is None else change.only_if_retries_below,
            keys.task_channel(tid),
            repr(change.clock),
        ]
        for pairs in (to_set, change.set_if_absent):
            for name, value in pairs.items():
                args += (name, dumps(value))
        names = [keys.task(tid), keys.log(tid), keys.global_seq, keys.global_log, keys.recent]
        if change.create and change.parent_id:
            names.append(keys.children(change.parent_id))
        return names, args

    def _details_call(self, pipe: Any, task_id: str) -> None:
        pipe.hmget(self.keys.task(task_id), ["id", *DETAIL_FIELDS])
        pipe.smembers(self.keys.children(task_id))

    @staticmethod
    def _details(raw: list[Any]) -> dict[str, Any] | None:
        values, children = raw
        if values[0] is None:
            return None
        details = {
            name: None if value is None else json.loads(value)
            for name, value in zip(DETAIL_FIELDS, values[1:], strict=True)
        }
        details["children"] = sorted(children)
        return details

    def _replicated(self, raw: list[Any], acknowledged: int) -> list[Any]:
        if int(raw[0]) == Status.RECORDED and acknowledged < self.min_replicas:
            raise NotReplicated(
                f"{acknowledged} of {self.min_replicas} replicas confirmed the change in time"
            )
        return raw

    @staticmethod
    def _outcome(raw: list[Any]) -> Outcome:
        status = Status(int(raw[0]))
        data = raw[1] if len(raw) > 1 and raw[1] else None
        g = int(raw[2]) if len(raw) > 2 else None
        return Outcome(status, data, g)

    @staticmethod
    def _entries(raw: list[Any]) -> list[tuple[int, str]]:
        return [(int(entry_id.split("-", 1)[0]), f["d"]) for entry_id, f in raw]


class Recorder(_Base):
    """The record for synchronous code: the Celery worker and its signal handlers."""

    def record(self, change: Change) -> Outcome:
        keys, args = self._record_call(change)
        if not self.min_replicas:
            return self._outcome(self._record(keys=keys, args=args))
        with self.client.pipeline(transaction=False) as pipe:
            self._record(keys=keys, args=args, client=pipe)
            pipe.wait(self.min_replicas, self._replica_timeout_ms)
            raw, acknowledged = pipe.execute()
        return self._outcome(self._replicated(raw, acknowledged))

    def get(self, task_id: str) -> str | None:
        return self._read(keys=[self.keys.task(task_id)])[0] or None

    def fill_ahead(self, creation: Change) -> bool:
        """Give a record made ahead of its message the details `creation` (the message's own
        creation, refused as EXISTS) has; False when the record was not made ahead."""
        tid = creation.task_id
        names = [self.keys.task(tid)]
        if creation.parent_id:
            names.append(self.keys.children(creation.parent_id))
        args: list[Any] = [self._ttl]
        for name in DETAIL_FIELDS:
            if name in creation.set:
                args += (name, dumps(creation.set[name]))
        return bool(self._fill_ahead(keys=names, args=args))

    def fields(self, task_id: str, names: list[str]) -> list[Any] | None:
        """Stored fields of a task, decoded (None where absent), or None for an unknown task."""
        raw = self.client.hmget(self.keys.task(task_id), ["id", *names])
        if raw[0] is None:
            return None
        return [None if value is None else json.loads(value) for value in raw[1:]]

    def details(self, task_id: str) -> dict[str, Any] | None:
        """What the dashboard shows beside the snapshot (DETAIL_FIELDS and `children`), or None
        for an unknown task."""
        with self.client.pipeline(transaction=False) as pipe:
            self._details_call(pipe, task_id)
            return self._details(pipe.execute())


class AsyncRecorder(_Base):
    """The record for the web process, on redis-py's asyncio client."""

    # When set, record_and_push (POST /tasks's one call) goes through it: many submissions'
    # calls in flight on one connection, at a fraction of redis-py's CPU per call.
    pipelined: Pipelined | None = None

    async def record(self, change: Change) -> Outcome:
        keys, args = self._record_call(change)
        if not self.min_replicas:
            return self._outcome(await self._record(keys=keys, args=args))
        async with self.client.pipeline(transaction=False) as pipe:
            await self._record(keys=keys, args=args, client=pipe)
            pipe.wait(self.min_replicas, self._replica_timeout_ms)
            raw, acknowledged = await pipe.execute()
        return self._outcome(self._replicated(raw, acknowledged))

    async def record_and_push(
        self, change: Change, list_keys: list[str], payload: str, expires_ms: int | None
    ) -> tuple[Outcome, str | None]:
        """Record `change` and, only if that created the task now, LPUSH `payload` onto the first
        of `list_keys` (and PEXPIRE all of them, with `expires_ms`), in one atomic call. Returns
        the outcome and Redis's error if it refused the push (the record is kept). Not with
        min_replicas, whose WAIT follows a plain record."""
        assert not self.min_replicas
        keys, args = self._record_call(change)
        all_keys = [*keys, *list_keys]
        all_args = [*args, payload, "" if expires_ms is None else expires_ms, len(keys)]
        script = self._record_and_push
        if self.pipelined is not None:
            raw = await self.pipelined.evalsha(script.sha, script.script, all_keys, all_args)
        else:
            raw = await script(keys=all_keys, args=all_args)
        return self._outcome(raw), (str(raw[3]) if len(raw) > 3 else None)

    async def get(self, task_id: str) -> str | None:
        return (await self._read(keys=[self.keys.task(task_id)]))[0] or None

    async def details(self, task_id: str) -> dict[str, Any] | None:
        """What the dashboard shows beside the snapshot (DETAIL_FIELDS and `children`), or None
        for an unknown task."""
        async with self.client.pipeline(transaction=False) as pipe:
            self._details_call(pipe, task_id)
            return self._details(await pipe.execute())

    async def get_many(self, task_ids: list[str]) -> list[str | None]:
        if not task_ids:
            return []
        raw = await self._read(keys=[self.keys.task(t) for t in task_ids])
        return [r or None for r in raw]

    async def owners(self, task_ids: list[str]) -> list[str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self.keys.task(task_id), "owner")
            raw = await pipe.execute()
        return [None if r is None else json.loads(r) for r in raw]

    async def owner(self, task_id: str) -> str | None:
        raw = await self.client.hget(self.keys.task(task_id), "owner")
        return None if raw is None else json.loads(raw)

    async def changes_after(self, task_id: str, after: int) -> list[tuple[int, str]]:
        """The retained changes of one task with `seq` > after, oldest first."""
        raw = await self.client.xrange(self.keys.log(task_id), min=f"{after + 1}-0")
        return self._entries(raw)

    async def global_changes_after(self, after: int, count: int) -> list[tuple[int, str, str, str]]:
        """Changes of every task with global seq > after: (global seq, snapshot, owner, task id)."""
        raw = await self.client.xrange(self.keys.global_log, min=f"{after + 1}-0", count=count)
        return [
            (seq, data, json.loads(f.get("o") or '""'), json.loads(f.get("t") or '""'))
            for (seq, data), (_, f) in zip(self._entries(raw), raw, strict=True)
        ]

    async def global_seq(self) -> int:
        raw = await self.client.get(self.keys.global_seq)
        return int(raw or 0)

    async def recent(self, max_score: float, count: int) -> list[tuple[str, float]]:
        """Up to `count` task ids submitted at or before `max_score`, newest first."""
        top = "+inf" if max_score == float("inf") else repr(max_score)
        raw = await self.client.zrevrangebyscore(
            self.keys.recent, max=top, min="-inf", start=0, num=count, withscores=True
        )
        return [(member, float(score)) for member, score in raw]
