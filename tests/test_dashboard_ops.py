"""The dashboard's operations panels in Debian's Chromium, against real workers: workers going
offline when killed, queues, counts and charts, filters kept in the URL, a task's detail with its
live timeline, re-run, and a chord's parent/child links."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from celery import chord
from playwright.sync_api import expect

from taskstream.celery_app import create_celery
from taskstream.settings import Settings
from tests.harness import (
    Proc,
    RedisServer,
    Service,
    accept_directly,
    direct_recorder,
    poll_until_done,
    submit,
    wait_for_worker,
    worker_command,
)

# Locator expectations wait as long as the pages' own timeout: they poll without evaluating a
# string in the page, which the dashboard's CSP (no 'unsafe-eval') refuses.
expect.set_options(timeout=20_000)

# The panels read the API every half second here (the page's default is two).
FAST = "?ops_ms=500"


@pytest.fixture
def open_page(open_page: Callable[..., Any]) -> Callable[..., Any]:
    """conftest's, each page ready once its operations panels have read the API."""
    return partial(open_page, ready="body[data-ops-loaded=true]")


def test_workers_panel_shows_a_killed_worker_offline_within_10_s(make_service, open_page) -> None:
    svc: Service = make_service(WORKER_OFFLINE_SECONDS="6")
    svc.start_worker(concurrency=2, name="steady")
    doomed = svc.start_worker(concurrency=3, name="doomed")
    svc.start_web()
    page = open_page(svc.url + "/" + FAST)
    expect(page.locator("tr.worker[data-online=true]")).to_have_count(2)
    doomed_row = page.locator('tr.worker[data-hostname^="doomed-"]')
    assert doomed_row.locator("td").nth(1).inner_text() == "3"  # pool size
    assert page.locator("#workers-summary").inner_text() == "2 of 2 online"

    doomed.kill()  # SIGKILL: the worker reports nothing more
    killed = time.monotonic()
    page.wait_for_selector('tr.worker[data-hostname^="doomed-"][data-online=false]', timeout=10_000)
    assert time.monotonic() - killed < 10
    assert page.locator('tr.worker[data-hostname^="steady-"]').get_attribute("data-online") == (
        "true"
    )
    assert page.locator("#workers-summary").inner_text() == "1 of 2 online"


def test_counts_queues_and_charts_follow_a_workload(make_service, open_page) -> None:
    svc: Service = make_service()
    svc.start_worker(concurrency=2)
    svc.start_web()
    page = open_page(svc.url + "/" + FAST)
    ids = [submit(svc.url, "add", x=i, y=1)["id"] for i in range(4)]
    ids.append(submit(svc.url, "fail", message="no")["id"])
    for task_id in ids:
        poll_until_done(svc.url, task_id)

    expect(page.locator("li.count[data-state=SUCCESS] .count-value")).to_have_text("4")
    expect(page.locator("li.count[data-state=FAILURE] .count-value")).to_have_text("1")
    page.wait_for_selector("#throughput-chart[data-total='5']")
    assert page.locator("#throughput-chart rect[data-outcome=FAILURE]").count() == 1
    assert page.locator("#runtime-chart g[data-task=add]").count() == 1
    assert "4 runs" in page.locator("#runtime-chart g[data-task=add]").text_content()
    queue = page.locator(f'tr.queue[data-queue="{svc.prefix}.tasks"]')
    assert queue.locator(".queue-depth").inner_text() == "0"
    # A count links to the list filtered by that state.
    page.click("li.count[data-state=FAILURE] a")
    page.wait_for_selector("li.task")
    assert page.eval_on_selector_all("li.task", "rows => rows.map(r => r.dataset.state)") == [
        "FAILURE"
    ]


def test_filters_live_in_the_url_and_survive_a_reload(make_service, open_page) -> None:
    svc: Service = make_service()
    svc.start_worker(concurrency=2)
    svc.start_web()
    adds = [submit(svc.url, "add", x=i, y=i)["id"] for i in range(3)]
    fails = [submit(svc.url, "fail", message=f"no {i}")["id"] for i in range(2)]
    for task_id in adds + fails:
        poll_until_done(svc.url, task_id)
    page = open_page(svc.url + "/")
    expect(page.locator("li.task")).to_have_count(5)

    page.check("input[name=state][value=FAILURE]")
    page.select_option("#filter-name", "fail")
    with page.expect_navigation():
        page.click("#filters-apply")
    query = parse_qs(urlsplit(page.url).query)
    assert query["state"] == ["FAILURE"] and query["name"] == ["fail"]

    def shown() -> list[str]:
        expect(page.locator("li.task")).to_have_count(2)
        return sorted(
            page.eval_on_selector_all("li.task", "rows => rows.map(r => r.dataset.taskId)")
        )

    assert shown() == sorted(fails)
    page.reload()
    page.wait_for_selector("body[data-ops-loaded=true]")
    assert shown() == sorted(fails)
    assert page.is_checked("input[name=state][value=FAILURE]")
    assert page.input_value("#filter-name") == "fail"
    # A task submitted now that does not match stays out; one that matches comes in live.
    late_add = submit(svc.url, "add", x=9, y=9)["id"]
    late_fail = submit(svc.url, "fail", message="late")["id"]
    page.wait_for_selector(f'li.task[data-task-id="{late_fail}"][data-state=FAILURE]')
    poll_until_done(svc.url, late_add)
    assert page.locator(f'li.task[data-task-id="{late_add}"]').count() == 0

    # Id prefix, shared as a URL.
    page.goto(f"{svc.url}/?q={adds[0][:6]}")
    page.wait_for_selector(f'li.task[data-task-id="{adds[0]}"]')
    assert page.locator("li.task").count() == 1
    assert page.input_value("#filter-q") == adds[0][:6]


def test_detail_timeline_grows_live_then_rerun_links_back(service: Service, open_page) -> None:
    original = submit(service.url, "sleep", seconds=2, steps=4)["id"]
    page = open_page(f"{service.url}/?id={original}")
    page.wait_for_selector("#detail[data-state=SUCCESS]", timeout=30_000)
    entries = page.eval_on_selector_all(
        "#timeline li", "items => items.map(i => [Number(i.dataset.seq), i.dataset.state])"
    )
    # Every change, in order, none missing: the page saw the task from PENDING to SUCCESS.
    assert [seq for seq, _ in entries] == list(range(1, len(entries) + 1))
    states = [state for _, state in entries]
    assert states[0] == "PENDING" and states[-1] == "SUCCESS"
    assert states.count("PROGRESS") == 4
    messages = page.locator("#timeline .timeline-message").all_inner_texts()
    assert any("step 4 of 4" in m for m in messages)
    expect(page.locator(".detail-worker")).to_have_text(re.compile(r"^worker0-"))
    assert "kwargs" in page.locator(".arguments").inner_text()
    assert '"seconds":2' in page.locator(".arguments").inner_text()

    with page.expect_navigation():
        page.click("#detail-rerun")
    rerun_id = parse_qs(urlsplit(page.url).query)["id"][0]
    assert rerun_id != original
    page.wait_for_selector("#detail[data-state=SUCCESS]", timeout=30_000)
    link = page.locator("#detail-links a.task-link")
    assert link.count() == 1
    assert original in link.get_attribute("href")
    # The re-run ran with the same arguments.
    assert '"seconds":2' in page.locator(".arguments").inner_text()


def test_rerun_is_refused_clearly_when_the_arguments_were_not_kept(make_service, open_page) -> None:
    svc: Service = make_service(ARGS_STORED_BYTES="64")
    svc.start_worker(concurrency=1)
    svc.start_web()
    task_id = submit(svc.url, "fail", message="x" * 200)["id"]
    poll_until_done(svc.url, task_id)
    page = open_page(f"{svc.url}/?id={task_id}")
    page.wait_for_selector("#detail[data-state=FAILURE]")
    assert "over the size cap" in page.locator(".arguments").inner_text()
    page.click("#detail-rerun")
    page.wait_for_selector("#detail-error:not([hidden])")
    assert "Cannot re-run" in page.locator("#detail-error").inner_text()


def test_a_chords_parent_and_children_are_linked(make_service, open_page) -> None:
    svc: Service = make_service()
    app_name = "tests.record_app:app"
    proc = Proc("rec0", worker_command(2, f"rec0-{svc.prefix}@%h", app=app_name), svc.env,
                svc.log_dir).start()  # fmt: skip
    svc.workers.append(proc)
    wait_for_worker(proc)
    svc.start_web()
    import tests.record_app  # noqa: F401  (registers the shared tasks for this producer)

    celery = create_celery(Settings.from_env(redis_url=svc.redis_url, key_prefix=svc.prefix))
    try:
        add = celery.tasks["tests.record_app.plain_add"]
        total = celery.tasks["tests.record_app.total"]
        result = chord([add.s(i, i) for i in range(3)], total.s()).apply_async()
        assert result.get(timeout=30) == 6
        members = [r.id for r in result.parent.results]
    finally:
        celery.close()
    body = poll_until_done(svc.url, result.id)
    assert body["state"] == "SUCCESS"

    page = open_page(f"{svc.url}/?id={result.id}")
    parent = page.locator("#detail-links dt:text-is('Parent') + dd a.task-link")
    parent.wait_for()
    parent_id = parse_qs(urlsplit(parent.get_attribute("href")).query)["id"][0]
    # The callback was sent by the member that finished the header.
    assert parent_id in members
    with page.expect_navigation():
        parent.click()
    page.wait_for_selector("#detail[data-state=SUCCESS]")
    children = page.locator("#detail-links ul.children a.task-link")
    children.first.wait_for()
    hrefs = [children.nth(i).get_attribute("href") for i in range(children.count())]
    assert any(result.id in h for h in hrefs)
    assert page.locator("#detail-links dt:text-is('Group')").count() == 1


def test_the_detail_ends_on_the_tasks_last_state_however_fast_it_changed(
    service: Service, open_page
) -> None:
    # Changes arrive while the page re-reads the detail (each read answered late here, as on a
    # slow link): a read answered after newer changes must not put the page back, and the end
    # must be shown, with every change in the timeline.
    page = open_page(f"{service.url}/")

    def late(route: Any) -> None:
        time.sleep(0.8)
        route.continue_()

    page.route("**/detail", late)
    task_id = submit(service.url, "sleep", seconds=1.5, steps=150)["id"]
    page.goto(f"{service.url}/?id={task_id}")
    final = poll_until_done(service.url, task_id)
    expect(page.locator("#detail")).to_have_attribute("data-seq", str(final["seq"]))
    expect(page.locator("#detail")).to_have_attribute("data-state", "SUCCESS")
    expect(page.locator("#timeline li")).to_have_count(final["seq"])
    assert page.locator("#detail-cancel").is_hidden()


def test_a_task_that_is_not_there_offers_nothing_to_do(service: Service, open_page) -> None:
    missing = "0123456789abcdef-no-such-task"
    page = open_page(f"{service.url}/?id={missing}")
    page.wait_for_selector("#detail-error:not([hidden])")
    assert page.locator("#detail-heading").inner_text() == f"Task {missing} not found"
    assert page.locator("#detail").get_attribute("aria-busy") == "false"
    for hidden in ("#detail-rerun", "#detail-cancel", "#detail-state"):
        assert page.locator(hidden).is_hidden()


def test_tasks_that_start_on_the_filtered_worker_arrive_live(make_service, open_page) -> None:
    svc: Service = make_service()
    worker = svc.start_worker(concurrency=2, name="only")
    svc.start_web()
    hostname = f"only-{svc.prefix}@"
    page = open_page(f"{svc.url}/{FAST}")
    expect(page.locator("tr.worker[data-online=true]")).to_have_count(1)
    full = page.locator("tr.worker").get_attribute("data-hostname")
    assert full and full.startswith(hostname), worker
    page = open_page(f"{svc.url}/{FAST}&worker={full}")
    ids = [submit(svc.url, "add", x=n, y=1)["id"] for n in range(3)]
    for task_id in ids:
        expect(page.locator(f'li.task[data-task-id="{task_id}"]')).to_have_count(1)


def test_an_empty_filtered_list_says_it_is_the_filter(service: Service, open_page) -> None:
    page = open_page(f"{service.url}/?q=no-task-starts-like-this")
    expect(page.locator("#tasks-empty")).to_have_text("No task matches these filters.")


def test_the_throughput_axis_labels_whole_counts_only(make_service, open_page) -> None:
    svc: Service = make_service()
    svc.start_worker(concurrency=1)
    svc.start_web()
    poll_until_done(svc.url, submit(svc.url, "add", x=1, y=1)["id"])
    page = open_page(f"{svc.url}/{FAST}")
    expect(page.locator("#throughput-chart rect")).not_to_have_count(0)
    # A peak of 1: the axis reads 0 and 1, not 0, 1, 1.
    labels = page.locator("#throughput-chart text.y-label").all_text_contents()
    assert labels == ["0", "1"]


def test_the_panels_say_when_they_are_not_current(tmp_path, open_page) -> None:
    # With Redis away the page's stream can stay open (the web waits for Redis), while the
    # panels' reads answer 503: they must not go on looking current.
    server = RedisServer().start()
    svc = Service(server.url, tmp_path)
    try:
        svc.start_web()
        page = open_page(f"{svc.url}/{FAST}")
        assert page.locator("#ops-stale").is_hidden()
        server.halt()
        page.wait_for_selector("#ops-stale:not([hidden])")
        assert "503" in page.inner_text("#ops-stale")
        server.start()
        page.wait_for_selector("#ops-stale", state="hidden", timeout=30_000)
    finally:
        svc.stop()
        server.stop()


def test_load_older_brings_back_the_rows_that_live_tasks_pushed_out(
    make_service, open_page
) -> None:
    # The list keeps 1,000 rows: live tasks push the oldest out. "Load older" must then continue
    # from the newest row pushed out, not from the cursor of the first page, which points past
    # every row that went.
    svc: Service = make_service()
    svc.start_web()
    recorder = direct_recorder(svc)
    try:
        old = [accept_directly(recorder) for _ in range(150)]
        page = open_page(f"{svc.url}/{FAST}")
        tasks = page.locator("li.task")
        expect(tasks).to_have_count(100)  # the first page: the 100 newest
        for _ in range(1_000):
            accept_directly(recorder)
        expect(tasks).to_have_count(1_000)
        expect(page.locator(f'li.task[data-task-id="{old[-1]}"]')).to_have_count(0)
        page.click("#load-more")
        # The 100 pushed out come back, newest first, before anything older than them.
        expect(page.locator(f'li.task[data-task-id="{old[-1]}"]')).to_have_count(1)
        expect(page.locator(f'li.task[data-task-id="{old[50]}"]')).to_have_count(1)
        expect(page.locator(f'li.task[data-task-id="{old[49]}"]')).to_have_count(0)
        expect(page.locator("#load-more")).to_be_visible()
    finally:
        recorder.client.close()
