"""The machine's own scaling from one core to two: the same CPU-bound Python work in one process,
then in two at once. Two web processes cannot do more than this times one's submissions, even
with nothing else on the machine (here, the load generator and Redis share the cores too): a
virtual machine's two CPUs may be two threads of one physical core, or share it with other
guests.

Run as `python -m bench.cores [SECONDS]` for the figure alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

# Work of the kind a web process does per request: encoding and decoding small JSON documents,
# building dicts and strings.
_ROUNDS = 160_000


def work(rounds: int = _ROUNDS) -> None:
    doc = {"id": "x" * 36, "task": "add", "state": "PENDING", "seq": 1, "kwargs": {"x": 2}}
    for i in range(rounds):
        doc["seq"] = i
        text = json.dumps(doc)
        back = json.loads(text)
        f"{back['id']}:{back['seq']}".encode()


def _timed(processes: int) -> float:
    """Seconds for `processes` processes, started together, each doing the same work."""
    cmd = [sys.executable, "-c", "import bench.cores as c; c.work()"]
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd) for _ in range(processes)]
    for proc in procs:
        proc.wait()
    return time.perf_counter() - started


def measure(repeats: int = 3) -> list[float]:
    """Per repeat, the work done by two processes at once over the work done by one alone
    in the same time (2.0: two full cores)."""
    ratios = []
    for _ in range(repeats):
        one = _timed(1)
        two = _timed(2)
        ratios.append(2 * one / two)
    return ratios


if __name__ == "__main__":
    found = measure()
    print(", ".join(f"{r:.2f}" for r in found), f"(median {statistics.median(found):.2f})")
