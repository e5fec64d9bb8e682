"""Query and header parameters, in-process: the models that document them also validate them, and
a parameter that does not fit is a problem document naming it. No socket and no Redis are needed:
a bad parameter is refused before the route reads anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from quart import Quart

from taskstream.settings import Settings
from taskstream.states import TaskState
from taskstream.web.app import create_app
from taskstream.web.models import MAX_EVENT_ID, ListQuery, StreamHeaders, StreamQuery
from tests.harness import new_prefix


@pytest.fixture(scope="module")
def app() -> Iterator[Quart]:
    yield create_app(Settings.from_env(key_prefix=new_prefix(), list_limit_max=50))


async def problem(app: Quart, path: str, **headers: str) -> tuple[int, dict]:
    response = await app.test_client().get(path, headers=headers)
    assert response.content_type == "application/problem+json"
    return response.status_code, await response.get_json()


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("limit=0", ["limit"]),
        ("limit=abc", ["limit"]),
        ("limit=51", ["limit"]),  # over this deployment's LIST_LIMIT_MAX
        ("limit=1&limit=2", ["limit"]),
        ("state=DONE", ["state"]),
        ("state=SUCCESS,DONE", ["state"]),
        ("state=DONE&limit=0", ["state", "limit"]),
        # Given, a parameter names something: an empty one is not taken as absent.
        ("state=", ["state"]),
        ("state=,", ["state"]),
        ("task=", ["task"]),
        ("worker=", ["worker"]),
        ("id_prefix=", ["id_prefix"]),
        ("cursor=", ["cursor"]),
        ("since=", ["since"]),
        ("limit=", ["limit"]),
    ],
)
async def test_a_bad_list_query_is_a_422_naming_each_parameter(app, query, fields):
    status, body = await problem(app, f"/tasks?{query}")
    assert status == 422
    assert body["type"] == "/problems/validation"
    assert sorted(e["field"] for e in body["errors"]) == sorted(fields)
    assert all(e["message"] and e["type"] for e in body["errors"])


@pytest.mark.parametrize("path", ["/events", "/tasks/some-id/events"])
# 2**63 parses, but Redis stream ids are 64-bit: it would fail mid-stream, after the 200.
@pytest.mark.parametrize(
    "value", ["abc", "-1", str(MAX_EVENT_ID + 1), str(2**64), "1.5", "2.0", "-0", "1e0", "0x2"]
)
async def test_a_bad_event_id_is_a_400_in_the_query_or_the_header(app, path, value):
    status, body = await problem(app, f"{path}?last_event_id={value}")
    assert (status, body["type"]) == (400, "/problems/bad-event-id")
    assert [e["field"] for e in body["errors"]] == ["last_event_id"]
    status, body = await problem(app, path, **{"Last-Event-ID": value})
    assert (status, body["type"]) == (400, "/problems/bad-event-id")
    assert [e["field"] for e in body["errors"]] == ["Last-Event-ID"]
    assert "Last-Event-ID" in body["detail"]


async def test_list_filters_repeat_or_separate_with_commas(app):
    async with app.app_context():
        query = ListQuery.model_validate({"state": ["SUCCESS,FAILURE", "REVOKED"], "task": "a,b"})
        assert query.state == [TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED]
        assert (query.task, query.limit, query.cursor) == (["a", "b"], 20, None)
        assert ListQuery.model_validate({"limit": "50"}).limit == 50


def test_the_header_wins_and_a_blank_id_counts_as_absent():
    query = StreamQuery.model_validate({"last_event_id": " 7 "})
    assert query.last_event_id == 7
    assert StreamHeaders(last_event_id="  ").resume_after(query) == 7
    assert StreamHeaders(last_event_id="9").resume_after(query) == 9
    assert StreamHeaders().resume_after(StreamQuery()) is None
    assert StreamHeaders(last_event_id=str(MAX_EVENT_ID)).last_event_id == MAX_EVENT_ID
    # ("+2" in a query is " 2", URL encoding's space; in a header it is no id a stream sent.)
    with pytest.raises(ValidationError):
        StreamHeaders(last_event_id="+2")


async def test_the_document_states_what_is_validated(app):
    document = await (await app.test_client().get("/openapi.json")).get_json()
    listing = document["paths"]["/tasks"]["get"]["parameters"]
    limit = next(p for p in listing if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 50)
    stream = document["paths"]["/tasks/{task_id}/events"]["get"]["parameters"]
    assert {("header", "Last-Event-ID"), ("query", "last_event_id")} <= {
        (p["in"], p["name"]) for p in stream
    }


async def test_the_global_stream_declares_its_epoch_parameter(app):
    document = await (await app.test_client().get("/openapi.json")).get_json()
    names = {p["name"] for p in document["paths"]["/events"]["get"]["parameters"]}
    assert {"epoch", "last_event_id", "Last-Event-ID"} <= names
    status, body = await problem(app, f"/events?epoch={'x' * 201}")
    assert (status, [e["field"] for e in body["errors"]]) == (400, ["epoch"])
