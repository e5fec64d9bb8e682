"""Holes found by attacking the running service (issue 10): what an outsider sends must not grow
the process, reach the logs raw, or get more than it should."""

from __future__ import annotations

import random
import string

import httpx

from tests.harness import Service

ADMIN = "ops-" + "a" * 40
ALICE = "alice-" + "b" * 40
SCRAPER = "scrape-" + "c" * 40
SECURE_ENV = {
    "API_TOKENS": f"alice:{ALICE},ops:{ADMIN}:admin",
    "SECRET_KEY": "k" * 40,
}


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_metrics_labels_come_from_a_closed_set(service: Service):
    def junk_method() -> str:
        return "".join(random.choices(string.ascii_uppercase, k=2048))

    with httpx.Client(base_url=service.url, timeout=10) as client:
        # One of each first, so the catch-all series exist before the count is taken.
        client.request(junk_method(), f"/no-such-{random.random()}")
        client.request(junk_method(), "/tasks")
        client.get("/metrics")
        before = client.get("/metrics").text
        for i in range(200):
            client.request(junk_method(), f"/unknown/{i}/{random.random()}")
        client.request(junk_method(), "/tasks")
        after = client.get("/metrics").text
    assert len(_series(after)) == len(_series(before))
    # Only the counts changed (a digit or two per series), not the label sets.
    ours_before = [line for line in _series(before) if line.startswith("taskstream_")]
    ours_after = [line for line in _series(after) if line.startswith("taskstream_")]
    assert len("".join(ours_after)) - len("".join(ours_before)) < 64
    assert "AAAAAAAA" not in after and "/unknown/" not in after
    catch_all = [line for line in ours_after if line.startswith("taskstream_http_requests")
                 and 'route="other"' in line and 'method="other"' in line]  # fmt: skip
    assert catch_all, ours_after


def test_metrics_are_for_admins_and_the_scrapers_token(make_service):
    svc = make_service(**SECURE_ENV, METRICS_TOKEN=SCRAPER)
    svc.start_web()
    url = f"{svc.url}/metrics"

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer("x" * 40)).status_code == 401
    refused = httpx.get(url, headers=bearer(ALICE))
    assert refused.status_code == 403
    assert refused.json()["type"] == "/problems/forbidden"
    for token in (ADMIN, SCRAPER):
        answer = httpx.get(url, headers=bearer(token))
        assert answer.status_code == 200
        assert "taskstream_open_streams" in answer.text
    # The scraper's token opens nothing else.
    assert httpx.get(f"{svc.url}/tasks", headers=bearer(SCRAPER)).status_code == 401


def test_with_authentication_off_a_metrics_token_still_guards_metrics(make_service):
    svc = make_service(METRICS_TOKEN=SCRAPER)
    svc.start_web()
    assert httpx.get(f"{svc.url}/metrics").status_code == 401
    answer = httpx.get(f"{svc.url}/metrics", headers={"Authorization": f"Bearer {SCRAPER}"})
    assert answer.status_code == 200
    assert httpx.get(f"{svc.url}/tasks").status_code == 200


def test_an_integer_beyond_a_float_is_refused_not_a_500(service: Service):
    for digits in (309, 400, 4000):
        body = '{"task": "add", "kwargs": {"x": ' + "9" * digits + ', "y": 1}}'
        answer = httpx.post(f"{service.url}/tasks", content=body,
                            headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 422, (digits, answer.text[:200])
        errors = answer.json()["errors"]
        assert errors[0]["field"] == "x" and errors[0]["type"] == "number_range"
    # Integers a float holds (10**308 has 309 digits) are still taken.
    body = '{"task": "add", "kwargs": {"x": 1' + "0" * 308 + ', "y": 1}}'
    answer = httpx.post(f"{service.url}/tasks", content=body,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 202


def test_a_huge_list_of_bad_arguments_gets_a_bounded_answer(service: Service):
    body = {"task": "add", "args": ["not a number"] * 6000}  # about 60 KB
    answer = httpx.post(f"{service.url}/tasks", json=body)
    assert answer.status_code in (413, 422), answer.status_code
    assert len(answer.content) < 16_000, len(answer.content)
    body = {"task": "add", "kwargs": {f"k{i}": "x" * 50 for i in range(900)}}
    answer = httpx.post(f"{service.url}/tasks", json=body)
    assert answer.status_code == 422
    assert len(answer.content) < 16_000, len(answer.content)
    problem = answer.json()
    assert len(problem["errors"]) == 20 and problem["errors_omitted"] > 0


def test_every_answer_carries_the_browser_protections(service: Service):
    for path in ("/", "/docs", "/tasks", "/openapi.json", "/no-such-page"):
        headers = httpx.get(service.url + path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp, path
        assert "script-src 'self'" in csp, path


def test_the_pages_work_under_their_content_security_policy(service: Service):
    from playwright.sync_api import sync_playwright

    from tests.harness import CHROMIUM_ARGS, require_chromium

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_chromium(),
                                             args=CHROMIUM_ARGS)  # fmt: skip
        try:
            page = browser.new_page()
            refused: list[str] = []
            page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text
                    or "Refused to" in m.text else None)  # fmt: skip
            page.goto(service.url + "/docs")
            page.wait_for_selector("details.op")  # rendered by its script, styled by its sheet
            assert page.eval_on_selector("body", "b => getComputedStyle(b).margin") == "0px"
            page.goto(service.url + "/")
            page.wait_for_selector("#mode[data-mode=live]")
            assert refused == []
        finally:
            browser.close()


def test_line_separators_never_split_a_log_record():
    import io
    import logging

    from taskstream.logs import StructuredFormatter

    for as_json in (False, True):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(StructuredFormatter(as_json))
        logger = logging.getLogger(f"test-line-breaks-{as_json}")
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning("path %s", "/a\u2028level=ERROR forged\u2029x\x85y")
        logger.removeHandler(handler)
        written = stream.getvalue()
        assert not {"\u2028", "\u2029", "\x85"} & set(written)
        assert len(written.splitlines()) == 1
        assert "\\u2028" in written


def test_with_authentication_off_only_loopback_names_are_answered(service: Service):
    port = service.ports[0]
    for host in ("evil.example", f"rebound.attacker.example:{port}", "10.0.0.8"):
        answer = httpx.get(f"{service.url}/tasks", headers={"Host": host})
        assert answer.status_code == 400, host
        assert answer.json()["type"] == "/problems/host-not-allowed"
        rebound = {"Host": host, "Origin": f"http://{host}"}
        refused = httpx.post(f"{service.url}/tasks", headers=rebound, json={"task": "add"})
        assert refused.status_code == 400  # a rebinding page's same-origin POST gets nowhere
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(f"{service.url}/tasks", headers={"Host": host}).status_code == 200
    # Orchestrators probe by address.
    assert httpx.get(f"{service.url}/healthz", headers={"Host": "10.0.0.8"}).status_code == 200


def test_allowed_hosts_and_a_trusted_proxys_scheme(make_service):
    svc = make_service(**SECURE_ENV, ALLOWED_HOSTS="jobs.example", TRUSTED_PROXIES="127.0.0.0/8")
    svc.start_web()
    bearer = {"Authorization": f"Bearer {ALICE}"}
    assert (
        httpx.get(f"{svc.url}/tasks", headers={**bearer, "Host": "jobs.example"}).status_code == 200
    )
    assert (
        httpx.get(f"{svc.url}/tasks", headers={**bearer, "Host": "other.example"}).status_code
        == 400
    )
    # Behind the TLS proxy (a trusted address here), the cookie is Secure.
    headers = {**bearer, "Host": "jobs.example"}
    behind = httpx.post(f"{svc.url}/session", headers={**headers, "X-Forwarded-Proto": "https"})
    assert "Secure" in behind.headers["set-cookie"]
    direct = httpx.post(f"{svc.url}/session", headers=headers)
    assert "Secure" not in direct.headers["set-cookie"]


def test_forwarded_headers_from_anyone_else_are_ignored(make_service):
    svc = make_service(**SECURE_ENV, TRUSTED_PROXIES="192.0.2.0/24")
    svc.start_web()
    claimed = httpx.post(f"{svc.url}/session", headers={"Authorization": f"Bearer {ALICE}",
                         "X-Forwarded-Proto": "https"})  # fmt: skip
    assert claimed.status_code == 200
    assert "Secure" not in claimed.headers["set-cookie"]


async def test_the_openapi_document_says_how_to_authenticate(make_app):  # type: ignore[no-untyped-def]
    from openapi_spec_validator import validate

    # With authentication on; with it off the document asks for nothing (test_openapi.py).
    app = await make_app(api_tokens=f"alice:{ALICE}", secret_key="s" * 32)
    answer = await app.test_client().get(
        "/openapi.json", headers={"Authorization": f"Bearer {ALICE}"}
    )
    document = await answer.get_json()
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["session"]["in"] == "cookie" and schemes["streamToken"]["in"] == "query"
    ops = {(path, method): op for path, item in document["paths"].items()
           for method, op in item.items()}  # fmt: skip
    assert {"bearer": []} in ops[("/tasks", "post")]["security"]
    assert {"streamToken": []} in ops[("/tasks/{task_id}/events", "get")]["security"]
    assert {"streamToken": []} not in ops[("/tasks", "get")]["security"]
    assert ops[("/healthz", "get")]["security"] == []
