"""Rules keyed by endpoint name must name real endpoints: a renamed route would otherwise leave
its rule behind silently (a public page that starts asking for a token, or an undocumented
operation), so these fail instead.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from taskstream.settings import Settings
from taskstream.web import openapi, security
from taskstream.web.app import create_app
from tests.harness import ROOT, new_prefix


@cache
def endpoints() -> frozenset[str]:
    app = create_app(Settings.from_env(key_prefix=new_prefix()))
    return frozenset(app.view_functions)


def test_every_public_endpoint_is_a_registered_route():
    assert security.PUBLIC <= endpoints(), security.PUBLIC - endpoints()


def test_every_documented_operation_is_a_registered_route_and_every_route_is_documented():
    assert set(openapi.OPERATIONS) == endpoints()


def test_endpoint_names_in_the_code_are_registered_routes():
    # Endpoint names compared by hand in the service's code ("tasks.x" literals).
    names = set()
    for path in (ROOT / "service").glob("*.py"):
        names |= set(re.findall(r"""["'](tasks\.[a-z_]+)["']""", path.read_text()))
    assert names <= endpoints(), names - endpoints()


def test_the_docs_refer_to_nothing_outside_the_repository():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if re.match(r"[a-z]+:", target):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), (path.name, target)


def test_the_code_refers_to_nothing_outside_the_repository():
    # The contract the service was first built to lived beside the repository; docs/api.md is
    # the reference now. (The name is split so that this file does not match itself.)
    outside = "CONTRACT" + ".md"
    for folder in ("service", "tasks", "taskctl", "bench", "tests"):
        for path in Path(ROOT / folder).rglob("*.py"):
            assert outside not in path.read_text(), path
