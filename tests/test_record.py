"""The event record on a real Redis: seq, storage, announcement and the terminal guard."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from taskstream.keys import Keys
from taskstream.record import (
    Change,
    Recorder,
    Status,
    new_task_fields,
    split_announcement,
    utcnow,
)
from tests.harness import accept_directly, new_prefix


@pytest.fixture
def recorder(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(new_prefix())
    yield Recorder(client, keys, ttl=60, retain=1000, global_retain=10000)
    for key in client.scan_iter(f"{keys.prefix}:*"):
        client.delete(key)
    client.close()


def create(recorder: Recorder) -> str:
    return accept_directly(recorder, "add")


def test_concurrent_writers_get_distinct_contiguous_seqs(recorder):
    task_id = create(recorder)
    seqs: list[int] = []
    lock = threading.Lock()

    def write() -> None:
        for n in range(50):
            outcome = recorder.record(Change(task_id, {"state": "PROGRESS", "progress": n}))
            with lock:
                seqs.append(outcome.snapshot["seq"])

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(2, 302))


def test_every_change_is_logged_and_announced_with_its_seq(recorder):
    pubsub = recorder.client.pubsub()
    pubsub.subscribe(recorder.keys.channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    task_id = create(recorder)
    recorder.record(Change(task_id, {"state": "STARTED"}, {"started_at": "first"}))
    recorder.record(Change(task_id, {"state": "STARTED"}, {"started_at": "second"}))
    announced = [split_announcement(pubsub.get_message(timeout=2)["data"]) for _ in range(3)]
    assert [h.seq for h, _ in announced] == [1, 2, 3]
    assert [h.state for h, _ in announced] == ["PENDING", "STARTED", "STARTED"]
    logged = recorder.client.xrange(recorder.keys.log(task_id))
    assert [entry_id for entry_id, _ in logged] == ["1-0", "2-0", "3-0"]
    assert [fields["d"] for _, fields in logged] == [data for _, data in announced]
    assert json.loads(announced[-1][1])["started_at"] == "first"
    pubsub.close()


def test_an_announcement_names_its_task_whatever_the_id_holds(recorder):
    # Celery takes any string as a task id (apply_async(task_id=...)), and a custom state is any
    # string too: the header's fields are read whole, spaces, quotes and escapes included.
    pubsub = recorder.client.pubsub()
    pubsub.subscribe(recorder.keys.channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    for task_id in ("job 42", 'nightly "report" 7 ', "tab\there é"):
        recorder.record(
            Change(task_id, new_task_fields(task_id, "add", utcnow()), create=True, score=1.0)
        )
        recorder.record(Change(task_id, {"state": "IN REVIEW", "progress": None}))
        created, custom = (split_announcement(pubsub.get_message(timeout=2)["data"]) for _ in "ab")
        assert (created[0].task_id, created[0].state) == (task_id, "PENDING")
        assert (custom[0].task_id, custom[0].state) == (task_id, "IN REVIEW")
        assert json.loads(custom[1])["id"] == task_id
    pubsub.close()


def test_terminal_state_is_final(recorder):
    task_id = create(recorder)
    assert recorder.record(Change(task_id, {"state": "REVOKED"})).status is Status.RECORDED
    late = recorder.record(Change(task_id, {"state": "SUCCESS", "result": 1}))
    assert late.status is Status.TERMINAL
    assert late.snapshot["state"] == "REVOKED"
    assert late.snapshot["seq"] == 2


def test_unknown_task_is_not_created_by_an_update(recorder):
    outcome = recorder.record(Change("never-accepted", {"state": "STARTED"}))
    assert outcome.status is Status.UNKNOWN
    assert recorder.get("never-accepted") is None


def test_values_reach_clients_exactly_as_encoded(recorder):
    task_id = create(recorder)
    value = {"float": 0.1 + 0.2, "big": 2**62, "text": "line\nid: 9\r\ndata: x\u2028", "empty": []}
    data = recorder.record(Change(task_id, {"state": "SUCCESS", "result": value})).data
    assert "\n" not in data and "\r" not in data
    assert json.loads(data)["result"] == value


def test_non_json_values_are_refused():
    from taskstream.record import dumps

    with pytest.raises(ValueError):
        dumps(float("nan"))


def test_a_retry_guard_keeps_retry_before_the_next_start(recorder):
    # The next attempt's STARTED (retries 1) got to Redis before the old attempt's RETRY: the
    # starting process records RETRY itself, and the late RETRY is refused as superseded.
    task_id = create(recorder)
    recorder.record(Change(task_id, {"state": "STARTED", "retries": 0}))
    early = recorder.record(
        Change(task_id, {"state": "RETRY", "retries": 1}, only_if_retries_below=1)
    )
    assert early.status is Status.RECORDED
    recorder.record(Change(task_id, {"state": "STARTED", "retries": 1}))
    late = recorder.record(
        Change(task_id, {"state": "RETRY", "retries": 1, "error": {"type": "E"}},
               only_if_retries_below=1)
    )  # fmt: skip
    assert late.status is Status.SUPERSEDED
    assert late.snapshot["state"] == "STARTED"
    states = [
        json.loads(f["d"])["state"] for _, f in recorder.client.xrange(recorder.keys.log(task_id))
    ]
    assert states == ["PENDING", "STARTED", "RETRY", "STARTED"]
