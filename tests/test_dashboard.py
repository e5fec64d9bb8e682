"""The dashboard at `GET /`, driven in a real headless Chromium against the real service.

Debian's Chromium at /usr/bin/chromium (`make system-deps` installs it), driven by Playwright's
Python API with `executable_path`, so no browser is ever downloaded. Without it these tests skip,
except under CI (CI=true), where they fail.

Set TASKSTREAM_SCREENSHOTS=docs to refresh the README's screenshots in docs/.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

# Playwright is in the test extra: missing, it is a broken set-up, never a reason to skip.
from tests.harness import (
    DESKTOP,
    ROOT,
    Service,
    ended_directly,
    poll_until_done,
    submit,
)

PHONE = {"width": 390, "height": 844}
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


# --- helpers ---------------------------------------------------------------------------------


def advance_until(page: Any, selector: str, most_ms: int = 60_000, step_ms: int = 2_000) -> None:
    """Move the page's clock on (its timers fire; the network keeps real time) until `selector`
    shows: the page's waits (grace before polling, stream retries) pass without the test waiting.
    """
    for _ in range(most_ms // step_ms):
        if page.query_selector(selector):
            return
        page.clock.fast_forward(step_ms)
        page.wait_for_timeout(150)  # real time for the requests the timers started
    page.wait_for_selector(selector, timeout=5_000)


def fill_form(page: Any, task: str, **fields: object) -> None:
    page.select_option("#task-type", task)
    for name, value in fields.items():
        page.fill(f"#arg-{name}", str(value))


def submit_from_form(page: Any, task: str, **fields: object) -> str:
    """Fill in and submit the form; returns the accepted task's id."""
    fill_form(page, task, **fields)
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/tasks")
    ) as answer:
        page.click("#submit-button")
    response = answer.value
    assert response.status == 202, response.text()
    return response.json()["id"]


def row(page: Any, task_id: str) -> Any:
    return page.locator(f'li.task[data-task-id="{task_id}"]')


def wait_for_state(page: Any, task_id: str, states: tuple[str, ...], timeout: float = 30) -> str:
    selector = ", ".join(f'li.task[data-task-id="{task_id}"][data-state="{s}"]' for s in states)
    page.wait_for_selector(selector, timeout=timeout * 1000)
    return row(page, task_id).get_attribute("data-state")


def progress_value(page: Any, task_id: str) -> float | None:
    return (
        row(page, task_id)
        .locator("progress")
        .evaluate("bar => bar.hasAttribute('value') ? bar.value : null")
    )


def mode(page: Any) -> str:
    return page.get_attribute("#mode", "data-mode")


def assert_rows_unique(page: Any) -> None:
    ids = page.eval_on_selector_all("li.task", "rows => rows.map(r => r.dataset.taskId)")
    assert len(ids) == len(set(ids)), ids


def poll_page(page: Any, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until `condition` (read through locators) holds. Not wait_for_function: a string
    predicate is compiled in the page, which its CSP (no unsafe-eval) refuses."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the page did not get there in time"
        page.wait_for_timeout(100)


def server_task_ids(base: str) -> set[str]:
    listing = httpx.get(f"{base}/tasks", params={"limit": 200}, timeout=5).json()
    return {item["id"] for item in listing["items"]}


def assert_matches_server(page: Any, base: str, task_id: str) -> dict:
    server = httpx.get(f"{base}/tasks/{task_id}", timeout=5).json()
    shown = row(page, task_id)
    assert shown.get_attribute("data-state") == server["state"]
    assert int(shown.get_attribute("data-seq")) == server["seq"]
    return server


def watch_to_the_end(page: Any, task_id: str, timeout: float = 30) -> list[float]:
    """Sample the task's progress bar until the task ends; returns the distinct values seen."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = progress_value(page, task_id) if row(page, task_id).count() else None
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        if row(page, task_id).get_attribute("data-state") in TERMINAL:
            value = progress_value(page, task_id)
            if value is not None and seen[-1:] != [value]:
                seen.append(value)
            return seen
        time.sleep(0.03)
    raise AssertionError(f"task {task_id} did not end on the page; progress seen: {seen}")


# --- live updates ----------------------------------------------------------------------------


def test_submitted_task_progresses_to_100_percent_live(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    page.wait_for_selector("#mode[data-mode=live]")

    task_id = submit_from_form(page, "sleep", seconds=2, steps=4)
    seen = watch_to_the_end(page, task_id)

    assert row(page, task_id).get_attribute("data-state") == "SUCCESS"
    assert seen[-1] == 100
    # Watched live: the bar moved through intermediate steps, never backwards.
    assert any(0 < v < 100 for v in seen), seen
    assert seen == sorted(seen), seen
    card = row(page, task_id)
    assert "100%" in card.locator(".progress-text").inner_text()
    assert "step 4 of 4" in card.locator(".progress-text").inner_text()
    assert '{"slept":2}' in card.locator(".result").inner_text()
    assert card.locator(".badge").inner_text() == "SUCCESS"
    assert card.locator("button.cancel").is_hidden()
    assert_matches_server(page, service.url, task_id)
    assert_rows_unique(page)
    assert "succeeded" in page.inner_text("#status")


def test_failure_shows_error_type_and_message(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    task_id = submit_from_form(page, "fail", message="the disk is on fire")

    assert wait_for_state(page, task_id, TERMINAL) == "FAILURE"
    error = row(page, task_id).locator(".task-error").inner_text()
    assert "RuntimeError" in error
    assert "the disk is on fire" in error
    assert row(page, task_id).locator(".badge").inner_text() == "FAILURE"
    assert_matches_server(page, service.url, task_id)


def test_retries_are_shown(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    task_id = submit_from_form(page, "flaky", failures=2)

    assert wait_for_state(page, task_id, TERMINAL) == "SUCCESS"
    card = row(page, task_id)
    assert card.locator(".task-meta").inner_text().split("Retries")[1].strip().startswith("2")
    assert '"ok"' in card.locator(".result").inner_text()


def test_cancel_a_running_task(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    task_id = submit_from_form(page, "sleep", seconds=30, steps=30)
    wait_for_state(page, task_id, ("PROGRESS",))

    row(page, task_id).get_by_role("button", name="Cancel").click()

    assert wait_for_state(page, task_id, TERMINAL) == "REVOKED"
    assert row(page, task_id).locator("button.cancel").is_hidden()
    assert "Cancelled" in row(page, task_id).inner_text()
    server = assert_matches_server(page, service.url, task_id)
    assert server["state"] == "REVOKED"


def test_a_task_celery_revoked_shows_why_not_cancelled(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    error = {"type": "TaskRevokedError", "message": "expired"}
    task_id = ended_directly(service, {"state": "REVOKED", "error": error})

    assert wait_for_state(page, task_id, TERMINAL) == "REVOKED"
    text = row(page, task_id).inner_text()
    assert "TaskRevokedError: expired" in row(page, task_id).locator(".task-error").inner_text()
    assert "Cancelled" not in text and "Last error" not in text


def test_validation_errors_are_shown_next_to_their_fields(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    ids_before = server_task_ids(service.url)
    fill_form(page, "sleep", seconds=-1, steps=0)
    with page.expect_response(lambda r: r.url.endswith("/tasks")) as answer:
        page.click("#submit-button")
    assert answer.value.status == 422

    seconds_error = page.locator("#arg-seconds-error")
    steps_error = page.locator("#arg-steps-error")
    seconds_error.wait_for()
    assert "greater than or equal to 0" in seconds_error.inner_text()
    assert "greater than or equal to 1" in steps_error.inner_text()
    # Each message sits in its own field's box and is tied to the input for screen readers.
    assert page.locator('[data-field="seconds"] #arg-seconds-error').count() == 1
    assert page.get_attribute("#arg-seconds", "aria-invalid") == "true"
    assert "arg-seconds-error" in page.get_attribute("#arg-seconds", "aria-describedby")
    assert page.evaluate("document.activeElement.id") == "arg-seconds"
    # Refused, so nothing was created (asked of the server: the page's list may still be loading).
    assert server_task_ids(service.url) == ids_before

    # Fixing a field clears its message; a good submission goes through.
    page.fill("#arg-seconds", "0")
    assert seconds_error.is_hidden()
    page.fill("#arg-steps", "1")
    with page.expect_response(lambda r: r.url.endswith("/tasks")) as answer:
        page.click("#submit-button")
    assert answer.value.status == 202
    assert steps_error.is_hidden()


def test_missing_required_argument_is_reported_on_its_field(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    fill_form(page, "add", x=2)
    with page.expect_response(lambda r: r.url.endswith("/tasks")) as answer:
        page.click("#submit-button")
    assert answer.value.status == 422
    page.locator("#arg-y-error").wait_for()
    assert "required" in page.inner_text("#arg-y-error").lower()
    assert page.locator("#arg-x-error").is_hidden()


def test_an_empty_required_text_field_is_reported_not_sent_blank(service: Service, open_page):
    page = open_page(service.url + "/")
    fill_form(page, "fail", message="")
    with page.expect_response(lambda r: r.url.endswith("/tasks")) as answer:
        page.click("#submit-button")
    assert answer.value.status == 422
    page.locator("#arg-message-error").wait_for()
    assert "required" in page.inner_text("#arg-message-error").lower()


def test_an_integer_past_two_to_the_53_is_sent_as_typed(service: Service, open_page) -> None:
    # A JavaScript number would round it (9007199254740993 to ...992); the API keeps it.
    page = open_page(service.url + "/")
    task_id = submit_from_form(page, "add", x=9007199254740993, y=0)
    assert poll_until_done(service.url, task_id)["result"] == 9007199254740993


def test_form_is_usable_from_the_keyboard(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    page.focus("#task-type")
    page.select_option("#task-type", "add")  # what arrow keys do on a focused select
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "arg-x"
    page.keyboard.type("20")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "arg-y"
    page.keyboard.type("22")
    with page.expect_response(lambda r: r.url.endswith("/tasks")) as answer:
        page.keyboard.press("Enter")
    task_id = answer.value.json()["id"]
    assert wait_for_state(page, task_id, TERMINAL) == "SUCCESS"
    assert row(page, task_id).locator(".result").inner_text().strip() == "42"

    # Every form control has a label; the status region is announced politely.
    unlabelled = page.eval_on_selector_all(
        "#submit-form input, #submit-form select, #submit-form textarea",
        "els => els.filter(e => e.labels.length === 0).map(e => e.id)",
    )
    assert unlabelled == []
    assert page.get_attribute("#status", "aria-live") == "polite"
    # Each progress bar has an accessible name (the task's title).
    names = page.eval_on_selector_all(
        "li.task progress", "bars => bars.map(b => b.getAttribute('aria-labelledby'))"
    )
    assert names and all(names)


def test_tasks_submitted_elsewhere_appear(service: Service, open_page) -> None:
    page = open_page(service.url + "/")
    page.wait_for_selector("#mode[data-mode=live]")
    task_id = submit(service.url, "add", x=1, y=2)["id"]
    assert wait_for_state(page, task_id, TERMINAL) == "SUCCESS"
    assert_rows_unique(page)


def test_page_catches_up_after_the_web_process_is_killed_and_restarted(
    make_service, open_page
) -> None:
    svc = make_service()
    svc.start_worker(concurrency=2)
    svc.start_web()
    page = open_page(svc.url + "/")
    page.wait_for_selector("#mode[data-mode=live]")
    stream_requests: list[dict[str, str]] = []
    page.on(
        "request",
        lambda r: stream_requests.append(r.all_headers()) if "/events" in r.url else None,
    )

    task_id = submit_from_form(page, "sleep", seconds=5, steps=10)
    wait_for_state(page, task_id, ("PROGRESS",))
    last_seen = page.evaluate("window.taskstreamDashboard.lastEventId")
    assert last_seen

    svc.webs[0].kill()
    page.wait_for_selector("#mode[data-mode=reconnecting]")
    shown_while_down = int(row(page, task_id).get_attribute("data-seq"))
    time.sleep(1)  # the worker carries on recording progress while no web process runs
    svc.restart_web(0)

    assert wait_for_state(page, task_id, TERMINAL) == "SUCCESS"
    page.wait_for_selector("#mode[data-mode=live]")
    assert progress_value(page, task_id) == 100
    assert row(page, task_id).count() == 1
    assert_rows_unique(page)
    server = assert_matches_server(page, svc.url, task_id)
    assert server["seq"] > shown_while_down
    # The browser resumed the one stream with Last-Event-ID rather than starting afresh.
    resumed = [h.get("last-event-id") for h in stream_requests if h.get("last-event-id")]
    assert resumed, stream_requests
    assert int(resumed[0]) >= int(last_seen)


def test_long_outage_polls_then_returns_to_live(make_service, open_page) -> None:
    """A web process down for longer than the page waits: it polls, then goes live again."""
    svc = make_service()
    svc.start_worker(concurrency=2)
    svc.start_web()
    page = open_page(svc.url + "/", clock=True)
    page.wait_for_selector("#mode[data-mode=live]")
    task_id = submit_from_form(page, "sleep", seconds=120, steps=120)
    wait_for_state(page, task_id, ("PROGRESS",))

    svc.webs[0].kill()
    # After 10 s without a stream (on the page's clock) it polls, and says the server does not
    # answer.
    advance_until(page, "#mode[data-mode=offline]")
    svc.restart_web(0)
    advance_until(page, "#mode[data-mode=polling]", step_ms=500)
    # Polling keeps the row moving, then the stream is tried again and taken back.
    seq = int(row(page, task_id).get_attribute("data-seq"))
    poll_page(page, lambda: int(row(page, task_id).get_attribute("data-seq")) > seq)
    # The stream is tried again 20 s (on the page's clock) after polling began.
    advance_until(page, "#mode[data-mode=live]")
    row(page, task_id).get_by_role("button", name="Cancel").click()
    assert wait_for_state(page, task_id, TERMINAL) == "REVOKED"
    assert_matches_server(page, svc.url, task_id)
    assert_rows_unique(page)


# --- the polling fallback --------------------------------------------------------------------


def _outcome_by_polling(page: Any, base: str) -> None:
    done_id = submit_from_form(page, "sleep", seconds=1, steps=4)
    failed_id = submit_from_form(page, "fail", message="polled failure")
    running_id = submit_from_form(page, "sleep", seconds=30, steps=30)

    seen = watch_to_the_end(page, done_id)
    assert seen[-1] == 100
    assert row(page, done_id).get_attribute("data-state") == "SUCCESS"
    assert wait_for_state(page, failed_id, TERMINAL) == "FAILURE"
    assert "polled failure" in row(page, failed_id).locator(".task-error").inner_text()

    wait_for_state(page, running_id, ("PROGRESS",))
    row(page, running_id).get_by_role("button", name="Cancel").click()
    assert wait_for_state(page, running_id, TERMINAL) == "REVOKED"

    for task_id in (done_id, failed_id, running_id):
        assert_matches_server(page, base, task_id)
    assert_rows_unique(page)
    assert mode(page) == "polling"


def test_poll_switch_gives_the_same_outcome(service: Service, open_page) -> None:
    streams: list[str] = []
    page = open_page(service.url + "/?poll=1")
    page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    assert mode(page) == "polling"
    assert page.inner_text("#mode-switch") == "use live updates"
    _outcome_by_polling(page, service.url)
    assert streams == []


def test_refused_stream_falls_back_to_polling(service: Service, browser) -> None:
    # A proxy that will not stream: /events answers 502, so EventSource closes for good.
    context = browser.new_context(viewport=DESKTOP)
    context.route("**/events*", lambda route: route.fulfill(status=502, body="bad gateway"))
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(service.url + "/")
        page.wait_for_selector("#mode[data-mode=polling]")
        _outcome_by_polling(page, service.url)
    finally:
        context.close()
    assert not errors, errors


def test_without_eventsource_the_page_polls(service: Service, open_page) -> None:
    page = open_page(service.url + "/", init_script="delete window.EventSource;")
    page.wait_for_selector("#mode[data-mode=polling]")
    task_id = submit_from_form(page, "add", x=3, y=4)
    assert wait_for_state(page, task_id, TERMINAL) == "SUCCESS"
    assert row(page, task_id).locator(".result").inner_text().strip() == "7"


# --- layout and screenshots ------------------------------------------------------------------


def _render_all_rows(page: Any) -> None:
    # A constructed style sheet (CSSOM): the page's CSP refuses an inline <style> tag.
    page.evaluate(
        "() => { const sheet = new CSSStyleSheet();"
        " sheet.replaceSync('.task { content-visibility: visible; }');"
        " document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet]; }"
    )


def test_screenshots_desktop_and_phone(make_service, open_page, tmp_path: Path) -> None:
    """Fill a fresh deployment with one task of each outcome, then photograph the page."""
    svc = make_service()
    svc.start_worker(concurrency=4)
    svc.start_web()
    page = open_page(svc.url + "/")
    page.wait_for_selector("#mode[data-mode=live]")

    ids = [
        submit_from_form(page, "sleep", seconds=1.5, steps=5),
        submit_from_form(page, "add", x=2, y=40),
        submit_from_form(page, "fail", message="disk quota exceeded"),
        submit_from_form(page, "flaky", failures=2),
    ]
    cancelled = submit_from_form(page, "sleep", seconds=60, steps=60)
    wait_for_state(page, cancelled, ("PROGRESS",))
    row(page, cancelled).get_by_role("button", name="Cancel").click()
    for task_id in [*ids, cancelled]:
        wait_for_state(page, task_id, TERMINAL)
    running = submit_from_form(page, "sleep", seconds=60, steps=20)
    bar = row(page, running).locator("progress")
    poll_page(page, lambda: float(bar.get_attribute("value") or 0) >= 15)
    # One validation error on show, as a user would meet it.
    fill_form(page, "sleep", seconds=-1, steps=10)
    page.click("#submit-button")
    page.locator("#arg-seconds-error").wait_for()
    page.evaluate("document.activeElement.blur()")
    # The operations panels have read the workers and the finished tasks.
    page.wait_for_selector("tr.worker[data-online=true]")
    chart = page.locator("#throughput-chart")
    poll_page(page, lambda: int(chart.get_attribute("data-total") or 0) >= 4)
    page.wait_for_timeout(400)  # let the progress bars' short transition settle

    # A full-page picture does not scroll, so rows the browser skips off screen
    # (content-visibility) would be blank in it: render them all for the picture.
    _render_all_rows(page)
    shots = {"dashboard.png": DESKTOP, "dashboard-phone.png": PHONE}
    for name, viewport in shots.items():
        page.set_viewport_size(viewport)
        page.wait_for_timeout(200)
        # Nothing sticks out sideways: no horizontal scrolling at either width.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name}: {overflow}px of horizontal scroll"
        page.screenshot(path=str(tmp_path / name), full_page=True)
    # The phone layout stacks the form above the list; the desktop one sets them side by side.
    page.set_viewport_size(PHONE)
    form_box = page.locator(".submit-panel").bounding_box()
    list_box = page.locator(".tasks-panel").bounding_box()
    assert list_box["y"] >= form_box["y"] + form_box["height"]
    page.set_viewport_size(DESKTOP)
    form_box = page.locator(".submit-panel").bounding_box()
    list_box = page.locator(".tasks-panel").bounding_box()
    assert list_box["x"] >= form_box["x"] + form_box["width"]

    # A task's own page: the flaky task's timeline, retries and all.
    page.set_viewport_size(DESKTOP)
    page.goto(f"{svc.url}/?id={ids[3]}")
    page.wait_for_selector("#detail[data-state=SUCCESS] #timeline li")
    _render_all_rows(page)
    page.wait_for_timeout(300)
    page.screenshot(path=str(tmp_path / "dashboard-detail.png"), full_page=True)
    shots["dashboard-detail.png"] = DESKTOP

    if os.environ.get("TASKSTREAM_SCREENSHOTS") == "docs":
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        for name in shots:
            shutil.copy(tmp_path / name, docs / name)
