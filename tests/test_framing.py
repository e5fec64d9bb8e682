"""Stream framing cannot be injected: hostile text in task output reaches clients as data only."""

from __future__ import annotations

import httpx
import pytest

from taskstream.record import Change
from tests.harness import accept_directly, direct_recorder, read_stream, submit

HOSTILE = [
    'line one\nid: 99\ndata: {"state": "SUCCESS"}\n\nevent: boom\n',
    "carriage\rid: 98\r\rretry: 1\r\n",
    "unicode separators \u2028\u2029 and \x85 next-line",
    "nul \x00 and escape \x1b[31m and bell \x07",
    ": keepalive\n\n",
    "</script><script>alert(1)</script>",
]


def raw_events(base: str, task_id: str) -> list[list[str]]:
    """The stream's blocks, split by the SSE rules (CRLF, CR and LF all end a line)."""
    with httpx.stream("GET", f"{base}/tasks/{task_id}/events?last_event_id=0", timeout=30) as r:
        body = r.read().decode()
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks, block = [], []
    for line in lines:
        if line == "":
            if block:
                blocks.append(block)
            block = []
        else:
            block.append(line)
    return blocks


@pytest.mark.parametrize("message", HOSTILE)
def test_hostile_error_messages_stay_inside_one_data_line(service, message):
    snap = submit(service.url, "fail", message=message)
    events = read_stream(service.url, snap["id"], query="?last_event_id=0")
    assert events[-1][1]["error"]["message"] == message
    assert [i for i, _ in events] == list(range(1, len(events) + 1))
    blocks = raw_events(service.url, snap["id"])
    assert blocks[0] == ["retry: 2000"]
    for block in blocks[1:]:
        assert len(block) == 2, block
        assert block[0].startswith("id: ") and block[1].startswith("data: ")


def test_hostile_progress_and_results_from_a_task_author(service):
    # A task author's progress messages and results are arbitrary: record them as a worker would.
    recorder = direct_recorder(service)
    task_id = accept_directly(recorder)
    for n, text in enumerate(HOSTILE, 1):
        progress = {"current": n, "total": len(HOSTILE), "percent": None, "message": text}
        recorder.record(Change(task_id, {"state": "PROGRESS", "progress": progress}))
    result = {"lines": HOSTILE, "nested": {"\nid: 1": "\r\n\r\n"}}
    recorder.record(Change(task_id, {"state": "SUCCESS", "result": result}))
    recorder.client.close()

    events = read_stream(service.url, task_id, query="?last_event_id=0")
    assert [s["progress"]["message"] for _, s in events[1:-1]] == HOSTILE
    assert events[-1][1]["result"] == result
    assert [i for i, _ in events] == list(range(1, len(HOSTILE) + 3))
    blocks = raw_events(service.url, task_id)
    assert len(blocks) == 1 + len(HOSTILE) + 2
    assert all(len(b) == 2 for b in blocks[1:])
