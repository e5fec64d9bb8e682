"""The tasks clients may submit, each with a pydantic model of its arguments.

Submission over HTTP is opt-in per task: only what is registered here (by `@submittable`, or by
name in SUBMITTABLE_TASKS) can be enqueued through the API. Every task the app runs is followable
whether it is here or not; Celery's built-in tasks are never reachable by name.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from celery import shared_task
from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    arguments: type[BaseModel]

    def schema(self) -> dict[str, Any]:
        return self.arguments.model_json_schema()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "schema": self.schema()}


@dataclass(frozen=True)
class FieldError:
    """One bad argument, named the way a client wrote it (`x`, `args[2]`, `kwargs`)."""

    field: str
    message: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "type": self.type}


class ArgumentsInvalid(Exception):
    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


REGISTRY: dict[str, TaskType] = {}


def number(ge: float | None = None, le: float | None = None) -> Any:
    """A JSON number argument: integers stay integers (add(2, 3) is 5, not 5.0), while booleans,
    numeric strings, NaN and infinities are refused with one clear message."""
    schema: dict[str, Any] = {"type": "number"}
    if ge is not None:
        schema["minimum"] = ge
    if le is not None:
        schema["maximum"] = le

    def check(value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PydanticCustomError("number_type", "Input should be a valid number")
        # An integer of 309+ digits is beyond what a float (or another JSON reader) holds, and
        # math.isfinite would overflow on it: refuse it as out of range instead.
        if not (
            abs(value) <= sys.float_info.max if isinstance(value, int) else math.isfinite(value)
        ):
            raise PydanticCustomError(
                "number_range", "Input should be a finite number of magnitude at most {max}",
                {"max": sys.float_info.max},
            )  # fmt: skip
        if ge is not None and value < ge:
            raise PydanticCustomError(
                "greater_than_equal", "Input should be greater than or equal to {ge}", {"ge": ge}
            )
        if le is not None and value > le:
            raise PydanticCustomError(
                "less_than_equal", "Input should be less than or equal to {le}", {"le": le}
            )
        return value

    return Annotated[int | float, PlainValidator(check), WithJsonSchema(schema)]


def submittable(
    arguments: type[BaseModel] | Callable[..., Any] | None = None,
    description: str | None = None,
    **celery_options: Any,
) -> Any:
    """Make a function a Celery task that clients may submit over HTTP.

    Three forms: `@submittable` (the arguments' schema derived from the signature and type
    hints), `@submittable(description=..., name=..., **celery_options)`, and
    `@submittable(ArgumentsModel, "description", **celery_options)` with a pydantic model that
    validates and documents the arguments. Celery options go to `shared_task` (`bind`, `name`,
    `base`, ...); the task's name is Celery's usual one unless `name` is given.
    """
    from taskstream.tracked import TrackedTask

    if _is_task(arguments):
        raise TypeError(_ALREADY_A_TASK)
    if callable(arguments) and not isinstance(arguments, type):
        # Bare `@submittable` over the function itself.
        return submittable(None, description, **celery_options)(arguments)
    if isinstance(arguments, type) and not issubclass(arguments, BaseModel):
        raise TypeError("submittable() takes a pydantic model of the arguments, or nothing")

    def register(fn: Callable[..., Any]) -> Any:
        if _is_task(fn):
            raise TypeError(_ALREADY_A_TASK)
        options = {"base": TrackedTask, **celery_options}
        name = options.setdefault("name", f"{fn.__module__}.{fn.__name__}")
        if name in REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        model = arguments or arguments_model(fn, bound=options.get("bind", False), name=name)
        task = shared_task(**options)(fn)
        REGISTRY[name] = TaskType(name, description or _summary(fn), model)
        return task

    return register


_ALREADY_A_TASK = (
    "put @submittable in place of @shared_task/@app.task (it makes the task), or name an "
    "existing task in SUBMITTABLE_TASKS"
)


def register_named(app: Any, names: tuple[str, ...]) -> None:
    """Make the app's tasks called `names` submittable, their arguments derived from each
    function's signature (SUBMITTABLE_TASKS). Raises LookupError for a name the app lacks."""
    builtin = [name for name in names if name.startswith("celery.")]
    if builtin:
        raise LookupError(f"Celery's own tasks are not submittable: {', '.join(builtin)}")
    missing = [name for name in names if name not in app.tasks]
    if missing:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise LookupError(f"no task named {', '.join(missing)}; the app knows {', '.join(known)}")
    for name in names:
        if name in REGISTRY:
            continue
        task = app.tasks[name]
        # `run` is the function as the caller sees it: bound for bind=True, so no `self`.
        REGISTRY[name] = TaskType(name, _summary(task.run), arguments_model(task.run, name=name))


def arguments_model(fn: Callable[..., Any], bound: bool = False, name: str = "") -> type[BaseModel]:
    """A pydantic model of the function's arguments from its signature and type hints.

    A parameter without a hint takes any JSON value; a hint pydantic cannot build a schema for
    is treated the same way. `**kwargs` admits other names; `*args` is not submittable, nor a
    positional-only parameter without a default (refused here).
    """
    signature = inspect.signature(fn)
    hints = _hints(getattr(fn, "__func__", fn))
    params = list(signature.parameters.values())
    if bound and params:
        params = params[1:]
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for param in params:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY and param.default is param.empty:
            raise TypeError(
                f"{name or fn.__name__}: parameter {param.name!r} is positional-only, and a "
                "submission gives arguments by name (JSON keyword arguments); make it a plain "
                "parameter to submit the task over HTTP"
            )
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        hint = _jsonable(hints.get(param.name, Any))
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hint, default)
    title = "".join(part.title() for part in re.split(r"[^A-Za-z0-9]+", name or fn.__name__))
    return create_model(
        f"{title}Arguments",
        __config__=ConfigDict(
            extra=extra, allow_inf_nan=False, title=f"{name or fn.__name__} arguments"
        ),
        **fields,
    )


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's type hints; one that does not resolve here (a name only the function's
    own scope knew) counts as no hint, without losing the others."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for name, hint in getattr(fn, "__annotations__", {}).items():
        try:
            hints[name] = eval(hint, namespace) if isinstance(hint, str) else hint
        except Exception:
            hints[name] = Any
    return hints


def _jsonable(hint: Any) -> Any:
    """The hint if pydantic can validate and describe it, else Any."""
    try:
        adapter = TypeAdapter(hint)
        adapter.json_schema()
    except Exception:
        return Any
    return hint


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _is_task(obj: Any) -> bool:
    from celery import Task
    from celery.local import Proxy

    # A Proxy is what shared_task and app.task return before the app is finalized; test its real
    # type first, since isinstance() on it would evaluate it (and finalize the app).
    return issubclass(type(obj), Proxy) or isinstance(obj, Task)


def bind_arguments(task_type: TaskType, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind positional and keyword arguments to the task's fields, as a call would, and validate.

    Returns the keyword arguments the task is sent with; raises ArgumentsInvalid naming each
    bad field.
    """
    names = list(task_type.arguments.model_fields)
    errors: list[FieldError] = []
    bound: dict[str, Any] = {}
    for index, value in enumerate(args):
        if index >= len(names):
            errors.append(
                FieldError(
                    f"args[{index}]",
                    f"{task_type.name} takes at most {len(names)} positional arguments",
                    "too_many_arguments",
                )
            )
            continue
        bound[names[index]] = value
    for name, value in kwargs.items():
        if name in bound:
            errors.append(FieldError(name, "given both by position and by name", "duplicate"))
            continue
        bound[name] = value
    try:
        model = task_type.arguments.model_validate(bound)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(part) for part in err["loc"]) or "kwargs"
            errors.append(FieldError(loc, err["msg"], err["type"]))
        raise ArgumentsInvalid(errors) from None
    if errors:
        raise ArgumentsInvalid(errors)
    # Only what the caller gave, as `.delay()` sends it: a default stays the function's own (a
    # sentinel has no JSON form, a date's JSON form is a string).
    for name, value in model.model_dump(exclude_unset=True).items():
        # A field that takes any value takes NaN and Infinity too, which the body's parser
        # admits but JSON (and so the task's message) does not; JSON mode would make them null.
        try:
            json.dumps(value, allow_nan=False, default=str)
        except ValueError:
            errors.append(FieldError(name, "NaN and Infinity are not JSON", "json_invalid"))
    if errors:
        raise ArgumentsInvalid(errors)
    return model.model_dump(mode="json", exclude_unset=True)
