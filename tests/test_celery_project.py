"""A Celery project of its own (tests/sample_project) followed by taskstream, as users run one.

A real worker started in the project's directory with CELERY_APP, a real web with CELERY_APP and
TASK_MODULES, a real Redis; the project's tasks are plain `@shared_task` and are sent from a
plain Python process with `.delay()` and canvas.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Service, python

SAMPLE = Path(__file__).resolve().parent / "sample_project"


def project_env(svc: Service) -> dict[str, str]:
    """What the project's own configuration reads, kept apart from other runs by the prefix."""
    return {
        "MYPROJ_BROKER_URL": svc.redis_url,
        "MYPROJ_QUEUE": f"{svc.prefix}.myproj",
    }


@pytest.fixture(scope="module")
def sample(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(redis_url, tmp_path_factory.mktemp("sample"), cwd=SAMPLE)
    svc.extra_env.update(
        CELERY_APP="myproj.celery:app",
        TASK_MODULES="tasks",
        SUBMITTABLE_TASKS="tasks.report",
        DEMO_TASKS="false",
        **project_env(svc),
    )
    with svc.running():
        yield svc


def in_project(svc: Service, code: str) -> object:
    """Run `code` in a plain Python process in the project's directory; its last line, as JSON."""
    done = subprocess.run(
        [python(), "-c", code],
        cwd=SAMPLE,
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def states(events: list[tuple[int, dict]]) -> list[str]:
    return [snap["state"] for _, snap in events]


def test_the_project_keeps_its_own_tasks_and_service_modules(sample):
    found = in_project(
        sample,
        "import json, service, tasks, taskstream, taskstream.web.app, taskstream.client;"
        "print(json.dumps([service.__file__, tasks.__file__, taskstream.__name__]))",
    )
    assert found == [str(SAMPLE / "service.py"), str(SAMPLE / "tasks.py"), "taskstream"]


def test_submittable_tasks_makes_one_task_submittable_with_a_derived_schema(sample):
    types = httpx.get(f"{sample.url}/task-types", timeout=5).json()
    # DEMO_TASKS=false: the project's one submittable task, nothing else.
    assert [t["name"] for t in types] == ["tasks.report"]
    (report,) = types
    assert report["description"] == "Writes a report of `pages` pages."
    schema = report["schema"]
    assert schema["required"] == ["title"]
    assert {name: p.get("type") for name, p in schema["properties"].items()} == {
        "title": "string",
        "pages": "integer",
        "draft": "boolean",
    }
    assert schema["properties"]["pages"]["default"] == 1
    assert schema["additionalProperties"] is False


def test_submittable_tasks_refuses_bad_arguments(sample):
    for body in (
        {"task": "tasks.report", "kwargs": {"pages": 2}},
        {"task": "tasks.report", "kwargs": {"title": "q3", "pages": "many"}},
        {"task": "tasks.report", "kwargs": {"title": "q3", "colour": "red"}},
        {"task": "tasks.report", "args": ["q3", 1, False, "extra"]},
    ):
        response = httpx.post(f"{sample.url}/tasks", json=body, timeout=5)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    # Only what is named is submittable: the project's other tasks are followable, not sendable.
    other = httpx.post(f"{sample.url}/tasks", json={"task": "tasks.add", "args": [1, 2]})
    assert other.status_code == 404
    assert other.json()["available"] == ["tasks.report"]
