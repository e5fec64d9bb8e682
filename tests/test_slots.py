"""Stream slots, in-process: per caller (when callers are known) and per process, given back."""

from __future__ import annotations

import pytest

from taskstream.web.auth import LOCAL, Caller
from taskstream.web.problems import Problem
from taskstream.web.security import StreamSlots


def refused(slots: StreamSlots, caller: Caller) -> int:
    with pytest.raises(Problem) as raised:
        slots.acquire(caller)
    assert raised.value.type == "/problems/too-many-streams"
    assert raised.value.headers["Retry-After"]
    return raised.value.status


def test_each_caller_has_its_own_bound_and_gets_its_slots_back():
    slots = StreamSlots(per_caller=2, per_process=10)
    alice, bob = Caller("alice", False), Caller("bob", False)
    held = [slots.acquire(alice), slots.acquire(alice)]
    assert refused(slots, alice) == 429
    slots.acquire(bob)  # another caller is not held up
    slots.release(held.pop())
    slots.acquire(alice)
    assert (slots.total, dict(slots.open)) == (3, {"alice": 2, "bob": 1})


def test_the_process_bound_holds_for_everyone_and_unknown_callers_share_it():
    slots = StreamSlots(per_caller=2, per_process=3)
    # Without authentication every stream is LOCAL's: only the process bound applies.
    keys = [slots.acquire(LOCAL) for _ in range(3)]
    assert refused(slots, LOCAL) == 503
    assert refused(slots, Caller("carol", False)) == 503
    for key in keys:
        slots.release(key)
    assert (slots.total, dict(slots.open)) == (0, {})
