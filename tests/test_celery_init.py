"""`taskstream.init_celery` on an app of one's own, and the argument schemas derived for
`@submittable` and SUBMITTABLE_TASKS (what `GET /task-types` shows and `POST /tasks` enforces)."""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, shared_task
from celery.exceptions import ImproperlyConfigured
from pydantic import ValidationError

import taskstream
from taskstream.celery_app import create_celery, load_celery
from taskstream.recording import RESULT_BACKEND
from taskstream.registry import (
    REGISTRY,
    ArgumentsInvalid,
    arguments_model,
    bind_arguments,
    submittable,
)
from taskstream.settings import Settings, SettingsError
from tests.harness import ROOT, python


@pytest.fixture
def registry() -> Iterator[dict]:
    """The process's registry, restored afterwards so other tests see only the demo tasks."""
    saved = dict(REGISTRY)
    try:
        yield REGISTRY
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)


def test_init_celery_keeps_the_apps_broker_queues_and_routing():
    app = Celery("theirs")
    app.conf.update(
        broker_url="amqp://guest@rabbit:5672/theirs",
        task_default_queue="their-queue",
        task_routes={"theirs.slow": {"queue": "slow"}},
        imports=["theirs.jobs"],
        task_serializer="pickle",
        accept_content=["pickle", "json"],
    )
    settings = Settings.from_env(task_modules=("theirs.reports",), demo_tasks=False)
    assert taskstream.init_celery(app, settings) is app
    conf = app.conf
    assert conf.broker_url == "amqp://guest@rabbit:5672/theirs"
    assert conf.task_default_queue == "their-queue"
    assert conf.task_routes == {"theirs.slow": {"queue": "slow"}}
    # JSON only, whatever the app had; late acks; STARTED tracked; the record's settings.
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_track_started
    assert conf.taskstream_settings is settings
    # The record is the app's result backend: AsyncResult reads what GET /tasks/{id} reads.
    assert conf.result_backend == RESULT_BACKEND
    assert tuple(conf.imports) == ("theirs.jobs", "theirs.reports")


def test_demo_tasks_are_imported_unless_turned_off():
    on = taskstream.init_celery(Celery("a"), Settings.from_env(demo_tasks=True))
    off = taskstream.init_celery(Celery("b"), Settings.from_env(demo_tasks=False))
    assert "taskstream.demo" in on.conf.imports
    assert "taskstream.demo" not in off.conf.imports


def test_our_own_app_takes_another_broker_and_keeps_the_record_on_redis():
    settings = Settings.from_env(
        redis_url="redis://127.0.0.1:6379/3", celery_broker_url="amqp://guest:guest@127.0.0.1//"
    )
    app = create_celery(settings)
    assert app.conf.broker_url == "amqp://guest:guest@127.0.0.1//"
    # Redis-only transport options (key prefix, visibility timeout) are not given to AMQP.
    assert app.conf.broker_transport_options == {}
    assert app.conf.taskstream_settings.redis_url == "redis://127.0.0.1:6379/3"
    assert app.conf.task_default_queue == f"{settings.key_prefix}.tasks"


def test_importing_taskstream_loads_neither_the_web_nor_celery_until_asked():
    # A worker imports taskstream without Quart or httpx; the HTTP client without Celery.
    code = (
        "import sys, taskstream, taskstream.client\n"
        "before = {m for m in ('celery', 'quart', 'pydantic') if m in sys.modules}\n"
        "taskstream.init_celery\n"
        "print(sorted(before), 'celery' in sys.modules, 'quart' in sys.modules)"
    )
    out = subprocess.run([python(), "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.split("]")[0] == "[", out.stderr
    assert out.stdout.strip().endswith("True False"), out.stdout


def test_the_bare_decorator_derives_the_schema_from_the_signature(registry):
    @submittable
    def resize(width: int, height: int = 10, *, keep_ratio: bool = True) -> None:
        """Resizes the picture.

        More words nobody needs in the list."""

    name = f"{__name__}.resize"
    assert resize.name == name
    described = registry[name].describe()
    assert described["description"] == "Resizes the picture."
    schema = described["schema"]
    assert schema["required"] == ["width"]
    assert {k: v["type"] for k, v in schema["properties"].items()} == {
        "width": "integer",
        "height": "integer",
        "keep_ratio": "boolean",
    }
    # What the caller gave, as `.delay(3, keep_ratio=False)` sends it: the function fills in
    # its own defaults.
    assert bind_arguments(registry[name], [3], {"keep_ratio": False}) == {
        "width": 3,
        "keep_ratio": False,
    }
    with pytest.raises(ArgumentsInvalid) as bad:
        bind_arguments(registry[name], ["wide"], {"depth": 1})
    assert {e.field for e in bad.value.errors} == {"width", "depth"}


def test_the_decorator_takes_a_name_description_and_celery_options(registry):
    @submittable(name="thumbnail", description="Makes a thumbnail.", bind=True)
    def thumb(self: Any, size: int) -> int:
        return size

    assert thumb.name == "thumbnail"
    assert registry["thumbnail"].describe()["description"] == "Makes a thumbnail."
    # `self` is Celery's, not an argument a client gives.
    assert list(registry["thumbnail"].schema()["properties"]) == ["size"]


def test_the_decorator_refuses_an_existing_task_and_says_what_to_do(registry):
    def existing() -> None:
        pass

    existing = shared_task(name=f"{__name__}.existing")(existing)
    with pytest.raises(TypeError, match="SUBMITTABLE_TASKS"):
        submittable(existing)


def test_a_required_positional_only_parameter_is_refused_at_start():
    # A submission sends keyword arguments (JSON), which cannot give `a`: say so when the task
    # is made submittable, not with a 500 at its first submission.
    def posonly(a: int, /, b: int) -> None:
        pass

    with pytest.raises(TypeError, match="positional-only"):
        arguments_model(posonly)

    def optional(a: int = 1, /, b: int = 2) -> None:
        pass

    assert list(arguments_model(optional).model_fields) == ["b"]


def test_no_hints_means_any_json_and_kwargs_admit_other_names():
    def loose(a, b=2, **rest):
        pass

    model = arguments_model(loose)
    assert model.model_json_schema()["properties"] == {
        "a": {"title": "A"},
        "b": {"default": 2, "title": "B"},
    }
    assert model.model_validate({"a": [1, {"x": None}], "z": 1}).model_dump() == {
        "a": [1, {"x": None}],
        "b": 2,
        "z": 1,
    }


def test_a_hint_pydantic_cannot_describe_takes_any_json():
    class Opaque:
        pass

    def odd(thing: Opaque, count: int) -> None:
        pass

    model = arguments_model(odd)
    assert model.model_validate({"thing": {"free": "form"}, "count": 1}).count == 1
    with pytest.raises(ValidationError):
        model.model_validate({"thing": 1, "count": "lots"})


def test_submittable_tasks_names_an_unknown_task_in_the_error():
    settings = Settings.from_env(submittable_tasks=("nowhere.to_be_found",), demo_tasks=True)
    with pytest.raises(SettingsError, match=r"SUBMITTABLE_TASKS: no task named nowhere"):
        load_celery(settings)
    with pytest.raises(SettingsError, match="SUBMITTABLE_TASKS: Celery's own tasks"):
        load_celery(Settings.from_env(submittable_tasks=("celery.chord_unlock",)))


def test_celery_app_must_name_an_app_init_celery_configured(tmp_path, monkeypatch):
    (tmp_path / "plainproj.py").write_text("from celery import Celery\napp = Celery('plain')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"CELERY_APP: 'plainproj:app' is not .*init_celery"):
        load_celery(Settings.from_env(celery_app="plainproj:app"))
    with pytest.raises(SettingsError, match=r"CELERY_APP: cannot load 'missingproj\.celery:app'"):
        load_celery(Settings.from_env(celery_app="missingproj.celery:app"))
    with pytest.raises(SettingsError, match="TASK_MODULES"):
        load_celery(Settings.from_env(task_modules=("missingproj.jobs",)))


def test_the_procfile_worker_runs_celery_app_from_the_project_directory():
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:")
    )
    assert "celery -A ${CELERY_APP:-taskstream.worker} worker" in line


def test_nan_and_infinity_are_refused_by_name_whatever_the_hint(registry):
    @submittable
    def measure(ratio: float, anything=None) -> None:
        pass

    measure_type = registry[f"{__name__}.measure"]
    for kwargs, field in (
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": 1.5, "anything": [float("inf")]}, "anything"),
    ):
        with pytest.raises(ArgumentsInvalid) as bad:
            bind_arguments(measure_type, [], kwargs)
        assert [e.field for e in bad.value.errors] == [field]
    assert bind_arguments(measure_type, [2], {}) == {"ratio": 2}


_UNSET = object()
_BORN = datetime.date(2000, 1, 1)


def test_defaults_are_the_functions_own_not_sent_as_json(registry):
    # A default with no JSON form (a sentinel) or whose JSON form is another type (a date) must
    # reach the function as itself: a submission sends only what the caller gave.
    @submittable
    def sync_account(account_id: int, since=_UNSET, born: datetime.date = _BORN) -> None:
        pass

    sync_type = registry[f"{__name__}.sync_account"]
    assert bind_arguments(sync_type, [42], {}) == {"account_id": 42}
    assert bind_arguments(sync_type, [42], {"born": "2001-02-03"}) == {
        "account_id": 42,
        "born": "2001-02-03",
    }


def test_a_result_backend_in_the_environment_is_refused_not_silently_obeyed(monkeypatch):
    # Celery reads CELERY_RESULT_BACKEND before the app's configuration: the record would not be
    # the result backend, and no task would ever be recorded as ended.
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://localhost:6379/5")
    with pytest.raises(ImproperlyConfigured, match="CELERY_RESULT_BACKEND"):
        taskstream.init_celery(Celery("theirs"), Settings.from_env(demo_tasks=False))
