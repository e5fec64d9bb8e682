"""`python -m bench.dashboard` (`make bench-dashboard`): does the dashboard stay smooth with
1,000 tasks listed and 50 changes a second arriving on its stream?

Measured in Debian's Chromium with the Performance API: long tasks (main-thread work over 50 ms,
PerformanceObserver `longtask`) and frame intervals (requestAnimationFrame timestamps) while the
changes arrive. The changes are recorded straight into the record, as workers record them, on 50
tasks in the list, so the figure is the page's own cost and not the workers'.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from taskstream.record import Change, utcnow
from taskstream.states import TaskState
from tests.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    RedisServer,
    Service,
    accept_directly,
    direct_recorder,
)

TASKS = 1_000
# Changes a second; BENCH_DASHBOARD_RATE=0 gives the same page idle, to tell the page's cost from
# what the machine's other load costs it.
RATE = int(os.environ.get("BENCH_DASHBOARD_RATE", "50"))
SECONDS = 20
RUNNING = 50  # tasks whose progress changes

OBSERVE = """
window.__perf = { longTasks: [], frames: [] };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__perf.longTasks.push(e.duration);
}).observe({ type: "longtask", buffered: true });
"""

FRAMES = """
() => {
  window.__perf.frames = [];
  window.__perf.longTasks = [];
  window.__perf.recording = true;
  performance.clearMeasures("taskstream:apply");
  let last = performance.now();
  const tick = (now) => {
    if (!window.__perf.recording) return;
    window.__perf.frames.push(now - last);
    last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}
"""


def _drive(svc: Service, ids: list[str], stop: threading.Event, sent: list[int]) -> None:
    rec = direct_recorder(svc)
    step = 0
    start = time.monotonic()
    try:
        while RATE and not stop.is_set():
            task_id = ids[step % len(ids)]
            progress = {"current": step, "total": None, "percent": None,
                        "message": f"change {step}"}  # fmt: skip
            rec.record(Change(task_id, {"state": TaskState.PROGRESS, "progress": progress}))
            step += 1
            # Paced against the clock, so the rate holds whatever one change costs.
            delay = start + step / max(RATE, 1e-9) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        sent.append(step)
        rec.client.close()


def measure() -> dict[str, float]:
    logdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    redis_server = RedisServer().start()
    svc = Service(redis_server.url, logdir)
    try:
        svc.start_web()
        rec = direct_recorder(svc)
        ids = [accept_directly(rec) for _ in range(TASKS)]
        for task_id in ids[RUNNING:]:
            rec.record(Change(task_id, {"state": TaskState.SUCCESS, "result": 1,
                                        "finished_at": utcnow()}))  # fmt: skip
        rec.client.close()
        running = ids[:RUNNING]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.add_init_script(OBSERVE)
            page.goto(svc.url + "/")
            page.wait_for_selector("#mode[data-mode=live]", timeout=30_000)
            while page.locator("li.task").count() < TASKS:
                page.wait_for_selector("#load-more:not([hidden]):not([disabled])")
                page.click("#load-more")
                page.wait_for_timeout(300)
            rows = page.locator("li.task").count()
            page.evaluate(FRAMES)
            stop = threading.Event()
            sent: list[int] = []
            driver = threading.Thread(target=_drive, args=(svc, running, stop, sent))
            driver.start()
            time.sleep(SECONDS)
            stop.set()
            driver.join()
            page.wait_for_timeout(500)
            perf = page.evaluate("() => { window.__perf.recording = false; return window.__perf; }")
            batches = page.evaluate(
                "() => performance.getEntriesByName('taskstream:apply')"
                ".map(m => [m.duration, m.detail])"
            )
            shown = page.evaluate(
                f"() => window.taskstreamDashboard.snapshot({json.dumps(running[0])}).seq"
            )
            browser.close()
    finally:
        svc.stop()
        redis_server.stop()
    frames = sorted(perf["frames"][1:])
    long_tasks = perf["longTasks"]
    return {
        "rows": rows,
        # Script time the page spent applying the stream's changes, batch by batch (one a frame).
        "apply_batches": len(batches),
        "apply_ms_total": round(sum(d for d, _ in batches), 1),
        "apply_ms_median": round(statistics.median([d for d, _ in batches] or [0.0]), 2),
        "apply_ms_max": round(max((d for d, _ in batches), default=0.0), 1),
        "changes_sent": sent[0],
        "changes_per_second": sent[0] / SECONDS,
        "last_seq_shown_of_first_task": shown,
        "long_tasks": len(long_tasks),
        "long_task_ms_total": round(sum(long_tasks), 1),
        "long_task_ms_max": round(max(long_tasks, default=0.0), 1),
        "frames": len(frames),
        "frame_ms_median": round(statistics.median(frames), 1),
        "frame_ms_p95": round(frames[int(0.95 * (len(frames) - 1))], 1),
        "frame_ms_p99": round(frames[int(0.99 * (len(frames) - 1))], 1),
        "frame_ms_max": round(frames[-1], 1),
        "frames_over_50ms": sum(1 for f in frames if f > 50),
        # The machine is shared: its load is inside the long tasks and the slowest frames.
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    figures = measure()
    lines = [f"- {name}: {value}" for name, value in figures.items()]
    text = (
        "# Dashboard under load (`make bench-dashboard`)\n\n"
        f"{TASKS:,} tasks listed, {RATE} changes a second for {SECONDS} s on {RUNNING} of them, "
        "Debian's Chromium (headless), long tasks and frame intervals from the Performance "
        "API.\n\n" + "\n".join(lines) + "\n"
    )
    print(text)
    (ROOT / "bench" / "dashboard-results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
