"""`python -m bench`: start the stack, take every measurement, print and save the figures."""

from __future__ import annotations

import os
import sys
import time

from bench import (
    cores,
    fleet,
    floor,
    hub_cost,
    latency,
    replicas,
    report,
    streams,
    submissions,
    throughput,
)
from bench.stack import Stack
from taskstream.web.launch import raise_open_file_limit
from tests.harness import free_port

NOTES = """How each figure is taken:

- Hub CPU per change: in the bench's own process, a hub as the web runs it (uvloop, the web's
  garbage collector settings) follows one task with one stream; a publisher process (as workers
  are) sends 10,000 announcements in the record's format on that task's channel (paced at
  2,000/s, then as fast as it can), then 10,000 on other tasks' channels. The figure is the hub
  thread's CPU time (time.thread_time) divided by the changes: from the bytes on the socket to
  the encoded SSE frame, the write excluded. Twice: for a stream whose task is woken to send
  each change, and for a stream the hub writes to itself, as it does a waiting HTTP/1.1 stream
  (its connection replaced by one that counts what it is given). Paced, each change wakes the
  loop alone, and that wake-up is most of the figure.
- Four web processes: one holds a stream of one task that changes ten times a second; a load
  process records changes of 200 other tasks at 2,000/s (pipelined, straight into the record
  as workers do) for 10 s. CPU is each process's utime+stime from /proc over the window, next
  to the same window idle before; messages are `taskstream_pubsub_messages_total`.
- Open streams (the first measurement, on a web process that has served nothing but one task):
  two client processes open 10,000 SSE connections in all to `/tasks/{id}/events` of one
  `sleep` task, queued while the worker is paused. The clients run as batch jobs (SCHED_BATCH)
  so that they do not preempt the web at each event they receive, as clients on machines of
  their own would not. Memory is the VmRSS of the web process with the streams open, minus
  before, divided by the streams. Redis connections are those in Redis's `CLIENT LIST` whose
  address is a socket of that process. Then the worker resumes and the task runs: received,
  started, six progress changes a second apart, and SUCCESS, which ends every stream. The
  spread of a change is the time from the first stream's receipt to the last one's, by the
  kernel's receive stamps (SO_TIMESTAMPNS: on loopback, taken inside the server's send), so
  that it is the server's, not the clients' catching up on the core the server leaves them;
  the same spread by the clients' reads is shown next to it.
- The floor: `bench/floor.py`, a uvloop server of a few lines with nothing else in it, writes
  six events of the same size to 10,000 sockets held by the same clients; its spread is what
  one process on this machine can do at best (on loopback, the kernel's send also delivers to
  the receiving socket and wakes its reader). Under it, the kernel's send alone: one process
  sends the same event to each of 2,000 of its own loopback connections, which nobody reads,
  five times; the figure is the median µs per send.
- Latency: 5 streams follow a `sleep` task of 500 steps of 10 ms, first with nothing else open,
  then while 5,000 other streams (held by batch clients, as above) are open on another task
  that changes every second (each of its changes is written to all 5,000 while the 5 are
  followed); each live event's delay is its receipt time minus its `updated_at`, the moment the
  worker recorded the change (each stream's first event is not counted). Under it, the
  machine's floor: the median round trip of 300 Redis PINGs back to back, and of 300 each sent
  after 10 ms asleep, as the worker is between the task's steps.
- Stream opens: client loops that each open a stream on a running task, read its first event and
  close, for 5 s.
- Submissions: keep-alive clients posting `add` tasks for 5 s, three times (the figure is the
  median run), with the worker paused (SIGSTOP)
  so that the figure is the web's acceptance rate alone; the same against `bench/plain_app.py`
  (a Quart route that only calls `task.apply_async`, under Hypercorn on uvloop), and against
  WEB_CONCURRENCY=2 on one port. py-spy samples the web during a fourth run of ours. Each run
  also takes the CPU (utime+stime from /proc, children included) that the web, the load
  generator and Redis spent while it lasted: the web's per submission, and each part's cores.
- The machine's own scaling: `bench/cores.py` times the same CPU-bound Python work (JSON in
  and out) in one process, then in two at once, three times, before anything else starts; two
  web processes cannot gain more than that over one.
- RECORD_MIN_REPLICAS: 2,000 changes recorded one after another against a master with one
  replica (both private redis-servers), acknowledged at once (0) or after Redis WAIT (1).

The web runs as `make run` and the Procfile start it (`python -m taskstream.web.serve`, uvloop),
WEB_CONCURRENCY=1 unless a row says otherwise. Server, worker, Redis and the load generators
share the machine's cores, so the load generators' own work is inside every figure; they run
on uvloop, as the web does, to take as little of the cores as they can.
"""

# Each load-generating process holds up to half of the streams, plus a margin.
_FILES_NEEDED = 5_200


def main() -> int:
    raise_open_file_limit()
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < _FILES_NEEDED:
        print(f"the open-file limit is below {_FILES_NEEDED}: raise it (ulimit -Hn) to bench "
              "10,000 streams", file=sys.stderr)  # fmt: skip
        return 2
    load = os.getloadavg()
    started = time.monotonic()
    print("the machine's cores: one CPU-bound process, then two at once ...", flush=True)
    core_scaling = cores.measure()
    print("the kernel's loopback send, alone ...", flush=True)
    send_us = floor.send_cost()
    stack = Stack()
    print(f"starting Redis, a worker and one web process (logs in {stack.logdir})", flush=True)
    stack.start()
    try:
        # First, while the web process has served nothing else: memory that earlier streams
        # held and gave back stays in the process and would be reused, hiding the cost.
        print("open streams: 10,000 on one task ...", flush=True)
        many = streams.measure(stack, n=10_000)
        print("the same spread from a bare uvloop loop (the floor) ...", flush=True)
        floor_ms, floor_read_ms = floor.measure(free_port())
        print("latency: a Redis round trip, busy and after idling (the floor) ...", flush=True)
        round_trip = floor.round_trip(stack.redis.url)
        print("latency: 500 changes, 5 streams, nothing else open ...", flush=True)
        lat_alone = latency.measure(stack)
        print("latency: 500 changes, 5 streams, 5,000 other streams open ...", flush=True)
        lat = latency.measure_with_open_streams(stack, 5_000)
        print("stream opens a second ...", flush=True)
        opens = throughput.stream_opens(stack)
        print("submissions a second: ours, a plain route, two processes; py-spy ...", flush=True)
        subs = submissions.measure(stack)
        print("the hub's CPU per change ...", flush=True)
        hub = hub_cost.measure(stack.redis.url)
        print("four web processes, 2,000 changes a second of tasks one of them serves ...",
              flush=True)  # fmt: skip
        crowd = fleet.measure(stack.redis.url, stack.logdir)
    finally:
        stack.stop()
    print("RECORD_MIN_REPLICAS: a master and a replica ...", flush=True)
    rep = replicas.measure()
    figures = report.Figures(
        many,
        lat,
        lat_alone,
        opens,
        subs,
        hub,
        crowd,
        rep,
        floor_ms,
        floor_read_ms,
        send_us,
        round_trip,
        core_scaling,
    )
    text = report.write(figures, NOTES, load)
    print()
    print(text)
    print(f"(written to {report.RESULTS}; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
