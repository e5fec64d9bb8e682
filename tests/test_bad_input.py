"""Bad input gets a clear RFC 9457 answer and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.harness import submit


def listed(base: str) -> list[str]:
    return [t["id"] for t in httpx.get(f"{base}/tasks?limit=200").json()["items"]]


CASES = [
    ("malformed json", b'{"task": "add", ', "application/json", 400, None),
    ("not an object", b"[1, 2]", "application/json", 422, None),
    ("unknown task", b'{"task": "nope"}', "application/json", 404, None),
    ("celery built-in", b'{"task": "celery.backend_cleanup"}', "application/json", 404, None),
    ("celery chord", b'{"task": "celery.chord_unlock", "args": []}', "application/json", 404, None),
    ("missing argument", b'{"task": "add", "kwargs": {"x": 1}}', "application/json", 422, "y"),
    ("wrong type", b'{"task": "add", "kwargs": {"x": 1, "y": "2"}}', "application/json", 422, "y"),
    ("boolean", b'{"task": "add", "args": [true, 1]}', "application/json", 422, "x"),
    ("too many args", b'{"task": "add", "args": [1, 2, 3]}', "application/json", 422, "args[2]"),
    ("unknown kwarg", b'{"task": "add", "kwargs": {"x": 1, "y": 2, "z": 3}}',
     "application/json", 422, "z"),
    ("both ways", b'{"task": "add", "args": [1, 2], "kwargs": {"x": 1}}',
     "application/json", 422, "x"),
    ("out of range", b'{"task": "sleep", "kwargs": {"seconds": -1}}', "application/json", 422,
     "seconds"),
    ("steps zero", b'{"task": "sleep", "kwargs": {"seconds": 1, "steps": 0}}',
     "application/json", 422, "steps"),
    ("args not a list", b'{"task": "add", "args": {"x": 1}}', "application/json", 422, "args"),
    ("extra body field", b'{"task": "add", "args": [1, 2], "queue": "x"}', "application/json",
     422, "queue"),
    ("form body", b"task=add&x=1", "application/x-www-form-urlencoded", 415, None),
    ("text body", b'{"task": "add", "args": [1, 2]}', "text/plain", 415, None),
    ("another json type", b'{"task": "add", "args": [1, 2]}', "application/vnd.api+json", 415,
     None),
    ("a problem as a body", b'{"task": "add", "args": [1, 2]}', "application/problem+json", 415,
     None),
    ("deeply nested", b'{"task": "add", "args": [' + b"[" * 100000 + b"]" * 100000 + b"]}",
     "application/json", 413, None),
    ("nested within the limit", b'{"task": "fail", "kwargs": {"message": ' + b"[" * 5000
     + b"]" * 5000 + b"}}", "application/json", 400, None),
    ("over the size limit", b'{"task": "fail", "kwargs": {"message": "' + b"x" * 70000 + b'"}}',
     "application/json", 413, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_submission_is_refused_and_enqueues_nothing(service, body, content_type, status, field):
    submit(service.url, "add", x=0, y=0)  # so the list has something to compare with
    before = listed(service.url)
    assert before
    response = httpx.post(
        f"{service.url}/tasks", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert "type" in problem
    assert "Traceback" not in response.text
    if field is not None:
        assert status == 422
        assert field in [e["field"] for e in problem["errors"]], problem
        assert all(e["message"] for e in problem["errors"])
    assert listed(service.url) == before


def test_unknown_route_and_method_are_problems(service):
    response = httpx.get(f"{service.url}/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    # An answer about this request, not a resource: no cache keeps it (a 404 before the task's
    # record was readable, say).
    assert response.headers["cache-control"] == "no-store"
    response = httpx.put(f"{service.url}/tasks")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert "POST" in response.headers["allow"]


def test_bad_cursor_is_400(service):
    response = httpx.get(f"{service.url}/tasks?cursor=!!!")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_a_json_body_is_taken_with_or_without_parameters(service, content_type):
    response = httpx.post(f"{service.url}/tasks", content=b'{"task": "add", "args": [1, 2]}',
                          headers={"Content-Type": content_type})  # fmt: skip
    assert response.status_code == 202, response.text
