"""Four web processes, one of them streaming one task, while 2,000 changes a second of other
tasks are recorded: how much CPU and how many pub/sub messages each web process spends on them.

`python -m bench.fleet load JSON` is the load: changes recorded straight into the record (as
workers do, pipelined), from a process of its own so that its CPU is nobody's figure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.stack import cpu_seconds
from taskstream.keys import Keys
from taskstream.record import Change, Recorder
from tests.harness import ROOT, Service, accept_directly


@dataclass
class WebLoad:
    cpu_ms: float
    idle_cpu_ms: float
    messages: int
    served_events: int


@dataclass
class FleetResult:
    webs: list[WebLoad]
    changes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.changes / self.seconds


def cpu_ms(pid: int) -> float:
    return cpu_seconds(pid) * 1000


def messages(base: str) -> int:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(r"^taskstream_pubsub_messages_total (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def _recorder(url: str, prefix: str) -> Recorder:
    client = redis.Redis.from_url(url, decode_responses=True)
    return Recorder(client, Keys(prefix), ttl=600, retain=1000, global_retain=10_000)


def load(args: dict) -> None:
    """Record `rate` changes a second over `tasks` for `seconds`, 20 to a round trip."""
    rec = _recorder(args["url"], args["prefix"])
    tasks, rate, seconds = args["tasks"], args["rate"], args["seconds"]
    batch = 20
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        with rec.client.pipeline(transaction=False) as pipe:
            for i in range(batch):
                task_id = tasks[(sent + i) % len(tasks)]
                keys, argv = rec._record_call(Change(task_id, {"progress": sent + i}))
                rec._record(keys=keys, args=argv, client=pipe)
            pipe.execute()
        sent += batch
        delay = started + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"changes": sent, "seconds": time.perf_counter() - started}), flush=True)


def measure(
    redis_url: str, logdir: Path, webs: int = 4, rate: int = 2_000, seconds: float = 10.0
) -> FleetResult:
    svc = Service(redis_url, logdir, prefix="benchfleet", extra_env={"LOG_LEVEL": "WARNING"})
    try:
        procs = [svc.start_web(timeout=60) for _ in range(webs)]
        rec = _recorder(redis_url, svc.prefix)
        watched = accept_directly(rec)
        others = [accept_directly(rec) for _ in range(200)]
        served = 0
        stop = threading.Event()

        def follow() -> None:
            nonlocal served
            url = f"{svc.url_of(0)}/tasks/{watched}/events"
            with httpx.stream("GET", url, timeout=None) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        served += 1
                    if stop.is_set():
                        return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        time.sleep(1.0)
        idle_before = [cpu_ms(p.pid) for p in procs]
        time.sleep(seconds)
        idle = [cpu_ms(p.pid) - b for p, b in zip(procs, idle_before, strict=True)]

        before_cpu = [cpu_ms(p.pid) for p in procs]
        before_msgs = [messages(svc.url_of(i)) for i in range(webs)]
        served_before = served
        loader = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", "load", json.dumps({
                "url": redis_url, "prefix": svc.prefix, "tasks": others, "rate": rate,
                "seconds": seconds})],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # The one stream's task changes too, ten times a second, while the others flood.
        watched_until = time.monotonic() + seconds
        n = 0
        while time.monotonic() < watched_until:
            rec.record(Change(watched, {"progress": n}))
            n += 1
            time.sleep(0.1)
        out, _ = loader.communicate(timeout=seconds + 60)
        done = json.loads(out)
        time.sleep(0.5)
        cpu = [cpu_ms(p.pid) - b for p, b in zip(procs, before_cpu, strict=True)]
        msgs = [messages(svc.url_of(i)) - b for i, b in enumerate(before_msgs)]
        stop.set()
        rec.client.close()
        loads = [
            WebLoad(cpu[i], idle[i], msgs[i], served - served_before if i == 0 else 0)
            for i in range(webs)
        ]
        return FleetResult(loads, done["changes"] + n, done["seconds"])
    finally:
        svc.stop()


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(json.loads(sys.argv[2]))
