"""The ASGI entry point Hypercorn serves: `hypercorn taskstream.web.asgi:app`."""

import gc

from taskstream import logs
from taskstream.settings import Settings
from taskstream.web.app import create_app
from taskstream.web.launch import raise_open_file_limit

settings = Settings.from_env()
logs.configure(settings.log_level, settings.log_format)

raise_open_file_limit()
app = create_app(settings, handle_signals=True)

# Thousands of open streams make CPython's full collections long (~0.6 s for 5,000 streams on a
# 2-core VM: the loop stops and every stream waits). Each change leaves every waiting stream with
# fresh objects for its next wait; at the default young threshold (700) they are promoted to the
# oldest generation within one fan-out, which starts a full collection every few changes. At
# 10,000 they die young instead. Freezing takes the import-time objects out of every collection.
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10)
