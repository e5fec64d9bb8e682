"""`python -m bench`: start the stack, take every measurement, print and save the figures."""

from __future__ import annotations

import sys
import time

from bench import latency, report, streams, throughput
from bench.stack import Stack
from service.launch import raise_open_file_limit

NOTES = """How each figure is taken:

- Open streams: two client processes open 5,000 SSE connections in all to
  `/tasks/{id}/events` of one `sleep` task that reports progress every 2 s. Memory is the
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
  so that the figure is the web's acceptance rate alone.
"""


def main() -> int:
    raise_open_file_limit()
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
    text = report.write(many, lat, opens, subs, NOTES)
    print()
    print(text)
    print(f"(written to {report.RESULTS}; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
