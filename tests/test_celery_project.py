"""A Celery project of its own (tests/sample_project) followed by taskstream, as users run one.

A real worker started in the project's directory with CELERY_APP, a real web with CELERY_APP and
TASK_MODULES, a real Redis; the project's tasks are plain `@shared_task` and are sent from a
plain Python process with `.delay()` and canvas.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskstream.web.launch import free_port, wait_until_ready
from tests.harness import Service, assert_contiguous, poll_until_done, python, read_stream

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


def test_delay_from_a_plain_process_is_followable_at_once(sample):
    task_id = in_project(sample, "import json, service; print(json.dumps(service.start_add(2, 3)))")
    # Recorded in the producer before the message could reach the worker: 200 straight away.
    first = httpx.get(f"{sample.url}/tasks/{task_id}", timeout=5)
    assert first.status_code == 200, first.text
    assert first.json()["task"] == "tasks.add"
    events = read_stream(sample.url, task_id, query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events)[0] == "PENDING"
    assert states(events)[-1] == "SUCCESS"
    assert events[-1][1]["result"] == 5


def test_a_producer_that_knows_nothing_of_taskstream_is_recorded_on_receipt(sample):
    # A bare Celery app (no init_celery, no taskstream imported) sending to the project's queue.
    task_id = in_project(
        sample,
        "import json, os\n"
        "from celery import Celery\n"
        "bare = Celery('elsewhere', broker=os.environ['MYPROJ_BROKER_URL'])\n"
        "sent = bare.send_task('tasks.add', args=[4, 5], queue=os.environ['MYPROJ_QUEUE'])\n"
        "print(json.dumps(sent.id))",
    )
    done = poll_until_done(sample.url, task_id)
    assert (done["task"], done["state"], done["result"]) == ("tasks.add", "SUCCESS", 9)
    events = read_stream(sample.url, task_id, query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    assert states(events)[-1] == "SUCCESS"


def test_update_state_progress_is_on_the_stream(sample):
    task_id = in_project(sample, "import json, service; print(json.dumps(service.start_crunch(4)))")
    events = read_stream(sample.url, task_id, query="?last_event_id=0")
    assert_contiguous([i for i, _ in events], first=1)
    progress = [snap["progress"] for _, snap in events if snap["state"] == "PROGRESS"]
    assert [(p["current"], p["total"]) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert events[-1][1]["state"] == "SUCCESS"
    assert events[-1][1]["result"] == {"crunched": 4}


def test_each_member_of_a_chain_is_followable(sample):
    first, second = in_project(
        sample, "import json, service; print(json.dumps(service.start_chain()))"
    )
    assert poll_until_done(sample.url, first)["result"] == 3
    assert poll_until_done(sample.url, second)["result"] == 13
    for task_id in (first, second):
        assert states(read_stream(sample.url, task_id, query="?last_event_id=0"))[-1] == "SUCCESS"


def test_a_chord_members_are_followable_and_its_result_is_right(sample):
    header, callback, result = in_project(
        sample,
        "import json, service\n"
        "from celery.result import AsyncResult\n"
        "header, callback = service.start_chord(4)\n"
        "print(json.dumps([header, callback, AsyncResult(callback).get(timeout=30)]))",
    )
    assert result == 0 + 2 + 4 + 6
    assert [poll_until_done(sample.url, i)["result"] for i in header] == [0, 2, 4, 6]
    snap = poll_until_done(sample.url, callback)
    assert (snap["task"], snap["state"], snap["result"]) == ("tasks.total", "SUCCESS", 12)


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


def test_submittable_tasks_refuses_bad_arguments_and_runs_good_ones(sample):
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

    accepted = httpx.post(
        f"{sample.url}/tasks", json={"task": "tasks.report", "args": ["q3"], "kwargs": {"pages": 3}}
    )
    assert accepted.status_code == 202, accepted.text
    done = poll_until_done(sample.url, accepted.json()["id"])
    assert (done["state"], done["result"]) == ("SUCCESS", "q3: 3 page(s)")


def test_taskstream_run_starts_the_projects_worker_and_web(sample, tmp_path):
    """`taskstream-run` (make run) in the project's directory: its worker runs CELERY_APP."""
    port = free_port()
    env = {**sample.env, "PORT": str(port), "HOST": "127.0.0.1"}
    env["KEY_PREFIX"] = f"{sample.prefix}run"
    env["MYPROJ_QUEUE"] = f"{sample.prefix}run.myproj"
    with open(tmp_path / "run.log", "wb") as log:
        launcher = subprocess.Popen(
            [python(), "-m", "taskstream.web.launch"], cwd=SAMPLE, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, 60, alive=lambda: launcher.poll() is None), (
            tmp_path / "run.log"
        ).read_text()
        types = httpx.get(f"{url}/task-types", timeout=5).json()
        assert [t["name"] for t in types] == ["tasks.report"]
        moved = {**sample.env, **env}
        done = subprocess.run(
            [python(), "-c", "import service; print(service.start_add(20, 22))"],
            cwd=SAMPLE, env=moved, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert poll_until_done(url, done.stdout.strip())["result"] == 42
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0
