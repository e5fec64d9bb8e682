"""The ASGI app for a server of your choice: `hypercorn taskstream.web.asgi:app`.

The service's own way to serve is `python -m taskstream.web.serve` (WEB_CONCURRENCY processes, each
serving in its main process, so SIGTERM ends its streams at once); with Hypercorn's `--workers`
the app runs in children of a supervisor, and a SIGTERM to the supervisor reaches it late.
"""

from taskstream import logs
from taskstream.settings import Settings
from taskstream.web import h2_window, lean, read_ahead
from taskstream.web.app import create_app
from taskstream.web.launch import raise_open_file_limit
from taskstream.web.serve import tune_gc

settings = Settings.from_env()
logs.configure(settings.log_level, settings.log_format)

raise_open_file_limit()
# Hypercorn would not hear a client that half-closes with a request queued (see the module).
read_ahead.install()
# An HTTP/2 client that grants no window would be buffered for without bound (see the module).
h2_window.install()
lean.install()
app = create_app(settings, handle_signals=True)

tune_gc()
