"""Task arguments from the command line: `key=value`, `key:=json` and positional `--arg`."""

from __future__ import annotations

import json
import math
from typing import Any


class ParamError(ValueError):
    """A task argument the user wrote in a form this client cannot read."""


def _no_constants(name: str) -> Any:
    # json.loads takes NaN and Infinity, which are not JSON and which the service refuses; a
    # value spelled like that is more likely meant as text.
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 is JSON, but no float holds it: a value past that range is not a number to send.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is beyond what a float holds")
    return value


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants, parse_float=_finite)


def parse_value(text: str) -> Any:
    """JSON when the text parses as JSON (`2`, `true`, `[1, 2]`, `"2"`), else the text itself."""
    try:
        return _loads(text)
    except ValueError:
        return text


def parse_params(items: list[str]) -> dict[str, Any]:
    """`["seconds=2", "message=hi", "tags:=[1]"]` -> `{"seconds": 2, "message": "hi", ...}`.

    `key=value` guesses (JSON if it parses, else a string); `key:=value` insists on JSON, so a
    typo in a list or object is an error rather than silently becoming a string.
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        strict = key.endswith(":")
        if strict:
            key = key[:-1]
        if not sep or not key:
            raise ParamError(f"{item!r}: write task arguments as key=value or key:=json")
        if key in kwargs:
            raise ParamError(f"{key!r} is given more than once")
        if strict:
            try:
                kwargs[key] = _loads(raw)
            except ValueError as exc:
                raise ParamError(f"{item!r}: the value after ':=' is not JSON ({exc})") from None
        else:
            kwargs[key] = parse_value(raw)
    return kwargs
