"""The HTTP side of taskstream: `create_app()` builds the app, `mount()` puts it inside yours."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "mount"]


def __getattr__(name: str) -> Any:
    # Lazily, so importing one module of the web side does not build the whole of it.
    if name == "create_app":
        from taskstream.web.app import create_app

        return create_app
    if name == "mount":
        from taskstream.web.embed import mount

        return mount
    raise AttributeError(name)
