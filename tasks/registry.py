"""The tasks clients may submit, each with a pydantic model of its arguments.

Only what is registered here can be enqueued through the API: Celery's built-in tasks and anything
else a worker happens to know are not reachable by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from celery import shared_task
from pydantic import BaseModel, PlainValidator, ValidationError, WithJsonSchema
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
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise PydanticCustomError("number_type", "Input should be a valid number")
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
    arguments: type[BaseModel], description: str, **celery_options: Any
) -> Callable[[Callable[..., Any]], Any]:
    """Register a function as a Celery task that clients may submit with `arguments`."""
    from taskstream.tracked import TrackedTask

    def register(fn: Callable[..., Any]) -> Any:
        name = fn.__name__
        if name in REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        task = shared_task(name=name, bind=True, base=TrackedTask, **celery_options)(fn)
        REGISTRY[name] = TaskType(name, description, arguments)
        return task

    return register


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
    return model.model_dump(mode="json")
