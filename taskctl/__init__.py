"""The Python client of taskstream (`Client`, `AsyncClient`) and its command line, `taskctl`.

Submit tasks, poll them, and follow them live over the service's event stream as an iterator
of snapshots that resumes by itself. Run `taskctl --help` for the command line.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskstream")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# After __version__: the client module reads it.
from taskstream.client.client import AsyncClient, Client, Page
from taskstream.client.errors import ProblemError, TaskstreamError, Unreachable
from taskstream.client.follow import AsyncFollow, Follow, FollowOptions, FollowStats

__all__ = [
    "AsyncClient",
    "AsyncFollow",
    "Client",
    "Follow",
    "FollowOptions",
    "FollowStats",
    "Page",
    "ProblemError",
    "TaskstreamError",
    "Unreachable",
    "__version__",
]
