"""The OpenAPI document: valid, complete, true to the service's answers, and usable offline."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from taskstream.settings import Settings
from taskstream.web.app import create_app
from taskstream.web.models import TaskSnapshot
from tests.harness import TERMINAL, Service, poll_until_done, read_stream, require_chromium, submit


@pytest.fixture(scope="module")
def document(service) -> dict:
    response = httpx.get(f"{service.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_route_in_the_app_is_documented(document):
    app = create_app(Settings.from_env())
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]*:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method.lower(), path))
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routes - documented == set()
    assert ("post", "/tasks") in routes and ("get", "/tasks/{task_id}/events") in routes


def test_errors_are_problem_documents_and_streams_are_event_streams(document):
    paths = document["paths"]
    submit_answers = paths["/tasks"]["post"]["responses"]
    for status in ("400", "404", "413", "415", "422", "503"):
        assert list(submit_answers[status]["content"]) == ["application/problem+json"], status
    stream = paths["/tasks/{task_id}/events"]["get"]
    ok = stream["responses"]["200"]["content"]["text/event-stream"]
    assert ok["schema"] == {"$ref": "#/components/schemas/TaskEvent"}
    event = document["components"]["schemas"]["TaskEvent"]["properties"]["data"]
    assert event["contentSchema"] == {"$ref": "#/components/schemas/TaskSnapshot"}
    assert "204" in stream["responses"]
    names = {(p["in"], p["name"]) for p in stream["parameters"]}
    assert {("header", "Last-Event-ID"), ("query", "last_event_id")} <= names
    snapshot = document["components"]["schemas"]["TaskSnapshot"]
    assert set(snapshot["required"]) == set(TaskSnapshot.model_fields)


def test_the_document_is_not_cached_like_every_json_answer(service):
    # It follows the deployment (its task types) and the request (the root path in `servers`).
    response = httpx.get(f"{service.url}/openapi.json", timeout=10)
    assert response.headers["cache-control"] == "no-store"
    assert httpx.get(f"{service.url}/task-types").headers["cache-control"] == "no-store"


# (body, accepted): what POST /tasks takes, as the document must say. Arguments bind by position
# and by name together, each once, as a Python call would.
SUBMISSIONS = [
    ({"task": "add", "args": [1, 2]}, True),
    ({"task": "add", "kwargs": {"x": 1, "y": 2.5}}, True),
    ({"task": "add", "args": [1], "kwargs": {"y": 2}}, True),
    ({"task": "sleep", "args": [0]}, True),
    ({"task": "sleep", "args": [0, 2]}, True),
    ({"task": "sleep", "args": [0], "kwargs": {"steps": 2}}, True),
    ({"task": "add"}, False),
    ({"task": "add", "args": [1]}, False),
    ({"task": "add", "kwargs": {"x": 1}}, False),
    ({"task": "add", "args": [1, 2, 3]}, False),
    ({"task": "add", "args": [1, "2"]}, False),
    ({"task": "add", "args": [True, 2]}, False),
    ({"task": "add", "args": [1, 2], "kwargs": {"x": 1}}, False),
    ({"task": "add", "args": [1], "kwargs": {"x": 1, "y": 2}}, False),
    ({"task": "add", "kwargs": {"x": 1, "y": 2, "z": 3}}, False),
    ({"task": "add", "kwargs": None}, False),
    ({"task": "sleep", "args": [0, 0]}, False),
    ({"task": "sleep", "kwargs": {"steps": 2}}, False),
    ({"task": "fail", "args": [1]}, False),
]


def test_the_documented_body_takes_what_post_tasks_takes_and_no_more(service, document):
    from jsonschema import Draft202012Validator

    pointer = "#/paths/~1tasks/post/requestBody/content/application~1json/schema"
    validator = Draft202012Validator({**document, "$ref": pointer})
    for body, accepted in SUBMISSIONS:
        response = httpx.post(f"{service.url}/tasks", json=body, timeout=10)
        assert (response.status_code == 202) is accepted, (body, response.text)
        assert validator.is_valid(body) is accepted, body


def test_real_snapshots_match_the_snapshot_model(service):
    created = submit(service.url, "sleep", seconds=0.2, steps=2)
    events = read_stream(service.url, created["id"], query="?last_event_id=0")
    done = poll_until_done(service.url, created["id"])
    assert done["state"] in TERMINAL
    for snap in [created, done, *(data for _, data in events)]:
        assert set(snap) == set(TaskSnapshot.model_fields)
        TaskSnapshot.model_validate(snap)
    assert any(snap["progress"] for _, snap in events)


def test_docs_page_renders_the_document_without_the_internet(service):
    response = httpx.get(f"{service.url}/docs", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/openapi.json" in page
    # Nothing is fetched from elsewhere: the machines that serve it may have no internet.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_docs_page_lists_every_operation_in_a_real_browser(service, document, tmp_path):
    # Debian's Chromium, as the dashboard's tests use; --dump-dom prints the page after its script
    # has fetched and rendered the document.
    page = subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{service.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert 'id="description" class="error"' not in page, page[-2000:]
    for path, item in document["paths"].items():
        for method in item:
            assert f'<span class="method {method}">{method}</span>' in page, (method, path)
            assert f'<span class="path">{html.escape(path)}</span>' in page, path


# Found while fuzzing beyond what the document lets a generator reach: a value that parses but
# that Redis refuses. (The other, an event id beyond 64 bits, is in test_parameters.py.)


def test_a_forged_cursor_holding_nan_is_a_bad_cursor(service):
    cursor = base64.urlsafe_b64encode(b"nan 0b6f").decode().rstrip("=")
    response = httpx.get(f"{service.url}/tasks", params={"cursor": cursor}, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "/problems/bad-cursor"


@pytest.fixture
def fuzzed(make_service) -> Service:
    """A deployment of the fuzzer's own, where every task ends within a second (a hard time
    limit): the fuzzer submits real tasks, sleeps of up to an hour among them, then opens their
    streams, which end only when the task does. Its own, so nothing it starts reaches the other
    tests' workers."""
    svc: Service = make_service(TASK_TIME_LIMIT_SECONDS="1")
    svc.start_worker()
    svc.start_web()
    return svc


def test_fuzzing_finds_no_server_error_and_no_answer_outside_the_document(fuzzed, tmp_path):
    """schemathesis generates requests from the document, valid and invalid, and checks each
    answer: no 5xx, and status, content type, headers and body as documented."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{fuzzed.url}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance",
        "--max-examples",
        "40",
        "--phases",
        "examples,coverage,fuzzing",
        # The global stream never ends by itself; a task's stream is fuzzed with unknown ids.
        "--exclude-path",
        "/events",
        "--request-timeout",
        "10",
        "--seed",
        "20261124",
        # One: its coverage phase describes hypothesis filters with ast.parse, which is not
        # thread-safe on CPython before 3.12 ("AST constructor recursion depth mismatch", seen
        # with two workers once query arrays declared minItems).
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


async def test_a_route_and_the_document_cannot_disagree_on_a_declared_model(make_app, monkeypatch):
    # /readyz validates its 200 and 503 answers with Readiness; the document shows that model.
    # Marking a status as declared that the route does not validate stops the document.
    from dataclasses import replace

    from taskstream.web import openapi

    app = await make_app()
    assert (await app.test_client().get("/healthz")).status_code == 200
    provider = app.extensions["QUART_SCHEMA"].openapi_provider
    readyz = provider.schema()["paths"]["/readyz"]["get"]["responses"]
    assert readyz["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Readiness")
    health = openapi.OPERATIONS["tasks.healthz"]
    drifted = {**health.answers, 503: openapi.Answer(openapi.DECLARED, "Not validated.")}
    monkeypatch.setitem(openapi.OPERATIONS, "tasks.healthz", replace(health, answers=drifted))
    with pytest.raises(RuntimeError, match=r"tasks\.healthz"):
        provider.schema()


async def document_of(make_app, **settings) -> dict:  # type: ignore[no-untyped-def]
    app = await make_app(**settings)
    headers = {"Authorization": "Bearer " + "a" * 32} if settings.get("api_tokens") else {}
    return await (await app.test_client().get("/openapi.json", headers=headers)).get_json()


def answers(document: dict, path: str, method: str) -> set[str]:
    return set(document["paths"][path][method]["responses"])


async def test_the_document_asks_for_credentials_only_where_this_deployment_does(make_app):
    opened = await document_of(make_app)
    assert "securitySchemes" not in opened["components"]
    for item in opened["paths"].values():
        for op in item.values():
            assert op["security"] == [] and "401" not in op["responses"], op["operationId"]
    secured = await document_of(make_app, api_tokens="ops:" + "a" * 32 + ":admin",
                                secret_key="s" * 32)  # fmt: skip
    assert set(secured["components"]["securitySchemes"]) == {"bearer", "session", "streamToken"}
    assert {"bearer": []} in secured["paths"]["/tasks"]["post"]["security"]
    assert {"401", "403", "429"} <= answers(secured, "/tasks", "post")
    assert "429" in answers(secured, "/tasks/{task_id}/events", "get")
    # A scraper's token alone: /metrics asks for it, nothing else asks for anything.
    scraped = await document_of(make_app, metrics_token="m" * 32)
    assert set(scraped["components"]["securitySchemes"]) == {"metricsToken"}
    assert scraped["paths"]["/metrics"]["get"]["security"] == [{"metricsToken": []}]
    assert scraped["paths"]["/tasks"]["get"]["security"] == []


async def test_each_operation_lists_only_the_answers_it_can_give(make_app):
    document = await document_of(make_app, api_tokens="ops:" + "a" * 32 + ":admin",
                                 secret_key="s" * 32)  # fmt: skip
    # Liveness reads nothing and asks for nothing: it answers or the process is down.
    assert answers(document, "/healthz", "get") == {"200", "500"}
    # No body is read but POST /tasks's; only unsafe methods are refused cross-site; only
    # submissions and streams are limited per caller.
    for path, method in [("/tasks", "get"), ("/tasks/{task_id}", "get"), ("/task-types", "get")]:
        assert not {"403", "413", "429"} & answers(document, path, method), (path, method)
    assert "413" not in answers(document, "/tasks/{task_id}", "delete")
    assert "403" in answers(document, "/tasks/{task_id}", "delete")


def test_metrics_are_documented_with_the_type_they_are_sent_with(service, document):
    # The exposition format's version is in its type: a reader of the document must find the
    # version the service writes, not a bare text/plain.
    sent = httpx.get(f"{service.url}/metrics", timeout=10).headers["content-type"]
    assert sent.startswith("text/plain; version=")
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [sent]
