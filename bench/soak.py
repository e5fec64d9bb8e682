"""`make soak`: many tasks and watchers while faults are injected at random; then the verdict.

Two web processes and two workers on a private, persistent Redis. Tasks of every kind are
submitted steadily; each gets watchers that join at random moments and follow it with the
client's follower, streaming only, like EventSource (on any error, reconnect to either web process
with Last-Event-ID). Meanwhile a
worker is SIGKILLed and replaced, a web process is restarted, Redis is restarted. At the end,
every watcher of every task must have seen contiguous ids and exactly one terminal state, last.

    python -m bench.soak [--seconds 120] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taskstream.client import Client, FollowOptions, TaskstreamError
from tests.harness import ROOT, TERMINAL, RedisServer, Service


class Stack(Service):
    """Two web processes and two workers on a persistent private Redis."""

    def __init__(self, logdir: Path):
        # Persistent, so that a restart keeps what was recorded, as a production Redis does.
        self.redis = RedisServer(persist=True)
        env = {"VISIBILITY_TIMEOUT_SECONDS": "6", "LOG_LEVEL": "WARNING"}
        super().__init__(self.redis.url, logdir, prefix="soak", extra_env=env)

    def stop(self) -> None:
        super().stop()
        self.redis.stop()


@dataclass
class Watch:
    task_id: str
    ids: list[int] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    reconnects: int = 0
    # Changes the service sent twice, or that never came (the client's follower counts them).
    repeated: int = 0
    skipped: int = 0
    done: bool = False


class EitherWeb(httpx.HTTPTransport):
    """Each request to either web process at random, as a load balancer would: a stream that
    breaks resumes on whichever process the next request reaches."""

    def __init__(self, ports: list[int], rng: random.Random):
        super().__init__()
        self.ports, self.rng = ports, rng

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self.rng.choice(self.ports))
        return super().handle_request(request)


def watch(stack: Stack, w: Watch, delay: float, rng: random.Random, deadline: float) -> None:
    """Follow the task with taskstream's client, streaming only (never polling), as EventSource
    does: on any error, reconnect with Last-Event-ID."""
    time.sleep(delay)
    options = FollowOptions(patience=deadline - time.monotonic(), stream_attempts=1_000_000)
    with Client(stack.url, transport=EitherWeb(stack.ports, rng)) as client:
        follow = client.follow(w.task_id, options=options)
        try:
            for snapshot in follow:
                w.ids.append(snapshot["seq"])
                w.states.append(snapshot["state"])
            w.done = True
        except TaskstreamError:
            pass
        w.reconnects = follow.stats.reconnects
        w.repeated, w.skipped = follow.stats.repeated, follow.stats.skipped


def submit(stack: Stack, rng: random.Random) -> str | None:
    kind = rng.choice(["sleep", "sleep", "sleep", "flaky", "fail", "add"])
    kwargs = {
        "sleep": lambda: {"seconds": round(rng.uniform(0.5, 4), 2), "steps": rng.randint(2, 40)},
        "flaky": lambda: {"failures": rng.randint(0, 2)},
        "fail": lambda: {"message": "on purpose"},
        "add": lambda: {"x": rng.randint(0, 9), "y": rng.randint(0, 9)},
    }[kind]()
    try:
        answer = httpx.post(f"{stack.url_of(rng.randrange(2))}/tasks", timeout=10,
                            json={"task": kind, "kwargs": kwargs})  # fmt: skip
    except httpx.HTTPError:
        return None
    return answer.json()["id"] if answer.status_code == 202 else None


def inject(stack: Stack, rng: random.Random, faults: Counter[str]) -> None:
    fault = rng.choice(["kill-worker", "restart-web", "restart-redis"])
    if fault == "kill-worker":
        victim = rng.choice([w for w in stack.workers if w.alive()])
        victim.kill()
        stack.start_worker(2, wait=False)
    elif fault == "restart-web":
        stack.restart_web(rng.randrange(2))
    else:
        stack.redis.restart(down_seconds=rng.uniform(0.5, 2))
    faults[fault] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    stack = Stack(Path(tempfile.mkdtemp(prefix="taskstream-soak-")))
    stack.redis.start()
    faults: Counter[str] = Counter()
    watches: list[Watch] = []
    threads: list[threading.Thread] = []
    try:
        stack.start_worker(2, wait=False)
        stack.start_worker(2, wait=False)
        stack.start_web()
        stack.start_web()
        begin = time.monotonic()
        end = begin + args.seconds
        next_fault = begin + rng.uniform(5, 12)
        while time.monotonic() < end:
            task_id = submit(stack, rng)
            if task_id:
                for _ in range(rng.randint(1, 3)):
                    w = Watch(task_id)
                    watches.append(w)
                    own_rng = random.Random(rng.random())
                    watch_args = (stack, w, rng.uniform(0, 3), own_rng, end + 120)
                    t = threading.Thread(target=watch, args=watch_args, daemon=True)
                    t.start()
                    threads.append(t)
            if time.monotonic() >= next_fault:
                inject(stack, rng, faults)
                next_fault = time.monotonic() + rng.uniform(8, 15)
            time.sleep(rng.uniform(0.2, 0.6))
        for t in threads:
            t.join(timeout=max(0.0, end + 120 - time.monotonic()))
    finally:
        stack.stop()

    violations = []
    for w in watches:
        contiguous = w.ids == list(range(w.ids[0], w.ids[0] + len(w.ids))) if w.ids else False
        terminals = sum(s in TERMINAL for s in w.states)
        faithful = w.repeated == 0 and w.skipped == 0
        if not (w.done and faithful and contiguous and terminals == 1 and w.states[-1] in TERMINAL):
            violations.append(w)
    tasks = {w.task_id for w in watches}
    endings = Counter(w.states[-1] for w in watches if w.states)
    lines = [
        "# Soak results",
        "",
        f"`python -m bench.soak --seconds {args.seconds:g} --seed {args.seed}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores: "
        "2 web processes, 2 workers (2 pool processes each), one persistent private Redis.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| tasks | {len(tasks)} |",
        f"| watchers | {len(watches)} |",
        f"| events received | {sum(len(w.ids) for w in watches)} |",
        f"| watcher reconnects | {sum(w.reconnects for w in watches)} |",
        f"| faults | {', '.join(f'{k}: {v}' for k, v in sorted(faults.items())) or 'none'} |",
        f"| endings seen | {', '.join(f'{k}: {v}' for k, v in sorted(endings.items()))} |",
        f"| violations (gaps, repeats, not exactly one terminal, unfinished) | {len(violations)} |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    for w in violations[:10]:
        print("violation:", w.task_id, w.ids[:5], "…", w.ids[-5:], w.states[-3:], w.done)
    (ROOT / "bench" / "soak-results.md").write_text(report)
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
