"""`python -m bench`: start the stack, take every measurement, print and save the figures."""

from __future__ import annotations

import os
import sys
import time

from bench import latency, report, streams, throughput
from bench.stack import Stack
from taskstream.web.launch import raise_open_file_limit

NOTES = """How each figure is taken:

- Open streams: two client processes open 5,000 SSE connections in all to
  `/tasks/{id}/events` of one `sleep` task that reports progress every second. Memory is the
  VmRSS of the process that serves the app (Hypercorn's worker) with the streams open, minus
  before, divided by the streams. Redis connections are those in Redis's `CLIENT LIST` whose
  address is a socket of that process. The spread of a change is the time from the first
  stream's receipt to the last one's, over the progress changes after all were open and the
  final `REVOKED` one (the task is cancelled to end the streams).
- Latency: a few streams follow a `sleep` task of 500 steps of 10 ms; each live event's delay
  is its receipt time minus its `updated_at`, the moment the worker recorded the change (the
  first event of each stream, the stored snapshot, is not counted).
- Stream opens: client loops that each open a stream on a running task, read its first event and
  close, for 5 s.
- Submissions: keep-alive clients posting `add` tasks for 5 s, with the worker paused (SIGSTOP)
  so that the figure is the web's acceptance rate alone. Most of that time is Celery's
  synchronous publishing (kombu), which runs on the web's thread pool; at the default log level
  (INFO) each accepted task also writes a log line (`BENCH_LOG_LEVEL=WARNING` gives ~20% more).

The web runs as `taskstream.web.launch.web_command` starts it: Hypercorn on uvloop, defaults.
What the figures owe to tuning found with this bench: uvloop (about half the fan-out time), a
Redis pool of 4 (it had grown to 16 under 5,000 opens), streams that keep no sent snapshot and
wake on one future (35.6 -> 31 KB a stream), and the web's young-GC threshold of 10,000 with
import-time objects frozen (full collections of 0.6-0.7 s every few changes are gone).
Server, worker, Redis and the load generators share the machine's cores, so the load generators'
own work is inside every figure (the spread includes the clients' time to read 5,000 events).
"""

# Each load-generating process holds up to half of the streams, plus a margin.
_FILES_NEEDED = 2_600


def main() -> int:
    raise_open_file_limit()
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < _FILES_NEEDED:
        print(f"the open-file limit is below {_FILES_NEEDED}: raise it (ulimit -Hn) to bench "
              "5,000 streams", file=sys.stderr)  # fmt: skip
        return 2
    load = os.getloadavg()
    started = time.monotonic()
    stack = Stack()
    print(f"starting Redis, a worker and one web process (logs in {stack.logdir})", flush=True)
    stack.start()
    try:
        print("latency: 500 changes, 5 streams ...", flush=True)
        lat = latency.measure(stack)
        print("open streams: 5,000 on one task ...", flush=True)
        many = streams.measure(stack)
        print("stream opens a second ...", flush=True)
        opens = throughput.stream_opens(stack)
        print("submissions a second ...", flush=True)
        subs = throughput.submissions(stack)
    finally:
        stack.stop()
    text = report.write(many, lat, opens, subs, NOTES, load)
    print()
    print(text)
    print(f"(written to {report.RESULTS}; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
