"""taskctl: the command-line client of taskstream.

Submit tasks, follow them live over the service's event stream, and script them with `--json`.
Run `taskctl --help` for the commands and the exit codes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskstream")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
