"""A Quart app of someone else's with taskstream mounted at /jobs, as the README shows.

Served by test_mount_served.py: `hypercorn --workers 0 tests.embedded_host:app`.
"""

from __future__ import annotations

from quart import Quart

from taskstream.web import mount

app = Quart(__name__)


@app.get("/")
async def home() -> str:
    return '<!doctype html><title>host</title><a href="/jobs/">Jobs</a>'


# Settings from the environment (REDIS_URL, KEY_PREFIX, ...), as the standalone app reads them.
mount(app, "/jobs", handle_signals=True)
