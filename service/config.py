"""Configuration from the environment, in one place, for the web process and the worker alike."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def redis_tls_options(url: str) -> dict[str, Any] | None:
    """TLS settings for Celery's broker from a `rediss://` REDIS_URL, verifying by default.

    redis-py reads `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile` from the
    URL's query itself; kombu does not, and without them it would connect unverified.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    options: dict[str, Any] = {
        "ssl_cert_reqs": reqs.get(query.get("ssl_cert_reqs", "required").lower(), ssl.CERT_REQUIRED)
    }
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(name):
            options[name] = query[name]
    return options


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. `from_env()` is the only place that reads the environment."""

    redis_url: str = "redis://localhost:6379/0"
    port: int = 8000
    # Prefixes every Redis key, pub/sub channel and Celery queue, so two deployments can share one
    # Redis (channels ignore database numbers, so a database number alone would not separate them).
    key_prefix: str = "taskstream"
    # How long a task and its change log are kept after its latest change.
    task_ttl_seconds: int = 86_400
    # How many of a task's latest changes are kept for replay (the contract asks for >= 1000).
    events_retained: int = 1_000
    # How many changes across all tasks are kept for resuming `GET /events`.
    global_events_retained: int = 10_000
    keepalive_seconds: float = 15.0
    # Quart's cut-off for ordinary responses; streams have none.
    response_timeout_seconds: float = 60.0
    # What the stream tells EventSource to wait before reconnecting, in milliseconds.
    sse_retry_ms: int = 2_000
    # Changes buffered in memory per stream before it falls back to reading the stored log.
    stream_buffer: int = 64
    # A client whose socket takes no data for this long is dropped (0 = never).
    stream_write_timeout_seconds: float = 30.0
    max_body_bytes: int = 64 * 1024
    list_limit_max: int = 200
    # Seconds after which an unacknowledged task message is handed to another worker. A task whose
    # worker died is run again after this long; tasks must finish well within it.
    visibility_timeout_seconds: int = 3_600
    # Hard and soft limits for one run of a task (0 = none).
    task_time_limit_seconds: float = 0.0
    task_soft_time_limit_seconds: float = 0.0
    worker_concurrency: int = 0
    expose_tracebacks: bool = False
    # Security (see docs/security.md). API_TOKENS turns authentication on:
    # "name:token[:admin],…"; every caller then sees only its own tasks, admins see all.
    api_tokens: str = ""
    # Signs session cookies and stream tokens; required when API_TOKENS is set.
    secret_key: str = ""
    stream_token_seconds: int = 300
    session_seconds: int = 8 * 3600
    # Origins allowed to call from a browser on another site (comma-separated, exact).
    cors_origins: tuple[str, ...] = ()
    # Submissions per caller per window; -1 = the default (600 with authentication, else off).
    rate_limit_per_minute: int = -1
    rate_limit_window_seconds: int = 60
    max_streams_per_caller: int = 100
    max_streams_per_process: int = 10_000
    max_args_bytes: int = 16 * 1024
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": os.environ.get("REDIS_URL") or cls.redis_url,
            "port": _env_int("PORT", cls.port),
            "key_prefix": os.environ.get("KEY_PREFIX") or cls.key_prefix,
            "task_ttl_seconds": _env_int("TASK_TTL_SECONDS", cls.task_ttl_seconds),
            "events_retained": _env_int("EVENTS_RETAINED", cls.events_retained),
            "global_events_retained": _env_int(
                "GLOBAL_EVENTS_RETAINED", cls.global_events_retained
            ),
            "keepalive_seconds": _env_float("KEEPALIVE_SECONDS", cls.keepalive_seconds),
            "response_timeout_seconds": _env_float(
                "RESPONSE_TIMEOUT_SECONDS", cls.response_timeout_seconds
            ),
            "sse_retry_ms": _env_int("SSE_RETRY_MS", cls.sse_retry_ms),
            "stream_buffer": _env_int("STREAM_BUFFER", cls.stream_buffer),
            "stream_write_timeout_seconds": _env_float(
                "STREAM_WRITE_TIMEOUT_SECONDS", cls.stream_write_timeout_seconds
            ),
            "max_body_bytes": _env_int("MAX_BODY_BYTES", cls.max_body_bytes),
            "list_limit_max": _env_int("LIST_LIMIT_MAX", cls.list_limit_max),
            "visibility_timeout_seconds": _env_int(
                "VISIBILITY_TIMEOUT_SECONDS", cls.visibility_timeout_seconds
            ),
            "task_time_limit_seconds": _env_float(
                "TASK_TIME_LIMIT_SECONDS", cls.task_time_limit_seconds
            ),
            "task_soft_time_limit_seconds": _env_float(
                "TASK_SOFT_TIME_LIMIT_SECONDS", cls.task_soft_time_limit_seconds
            ),
            "worker_concurrency": _env_int("WORKER_CONCURRENCY", cls.worker_concurrency),
            "expose_tracebacks": _env_bool("EXPOSE_TRACEBACKS", cls.expose_tracebacks),
            "log_level": os.environ.get("LOG_LEVEL") or cls.log_level,
            "api_tokens": os.environ.get("API_TOKENS", ""),
            "secret_key": os.environ.get("SECRET_KEY", ""),
            "stream_token_seconds": _env_int("STREAM_TOKEN_SECONDS", cls.stream_token_seconds),
            "session_seconds": _env_int("SESSION_SECONDS", cls.session_seconds),
            "cors_origins": tuple(
                o.strip().rstrip("/")
                for o in os.environ.get("CORS_ORIGINS", "").split(",")
                if o.strip()
            ),
            "rate_limit_per_minute": _env_int("RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute),
            "rate_limit_window_seconds": _env_int(
                "RATE_LIMIT_WINDOW_SECONDS", cls.rate_limit_window_seconds
            ),
            "max_streams_per_caller": _env_int(
                "MAX_STREAMS_PER_CALLER", cls.max_streams_per_caller
            ),
            "max_streams_per_process": _env_int(
                "MAX_STREAMS_PER_PROCESS", cls.max_streams_per_process
            ),
            "max_args_bytes": _env_int("MAX_ARGS_BYTES", cls.max_args_bytes),
        }
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.events_retained < 1_000:
            raise ValueError("EVENTS_RETAINED must be at least 1000 (the contract's promise)")
        if self.keepalive_seconds <= 0 or self.keepalive_seconds > 15:
            raise ValueError("KEEPALIVE_SECONDS must be in (0, 15]")
        if self.stream_buffer < 1:
            raise ValueError("STREAM_BUFFER must be at least 1")
        if ":" in self.key_prefix or not self.key_prefix:
            raise ValueError("KEY_PREFIX must be non-empty and contain no ':'")
        if self.api_tokens and len(self.secret_key) < 16:
            raise ValueError("API_TOKENS needs SECRET_KEY (16 characters or more) to sign with")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)

    @property
    def submissions_per_window(self) -> int:
        if self.rate_limit_per_minute >= 0:
            return self.rate_limit_per_minute
        return 600 if self.auth_enabled else 0
