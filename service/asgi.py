"""The ASGI entry point Hypercorn serves: `hypercorn service.asgi:app`."""

import gc

from service import logs
from service.app import create_app
from service.launch import raise_open_file_limit

logs.configure()

raise_open_file_limit()
app = create_app(handle_signals=True)

# Thousands of open streams make CPython's full collections long (~0.6 s for 5,000 streams on a
# 2-core VM: the loop stops and every stream waits). Each change leaves every waiting stream with
# fresh objects for its next wait; at the default young threshold (700) they are promoted to the
# oldest generation within one fan-out, which starts a full collection every few changes. At
# 10,000 they die young instead. Freezing takes the import-time objects out of every collection.
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10)
