"""Configuration from the environment, in one place, for the web process and the worker alike.

Every variable is a field of `Settings`, named as the field in capitals (`redis_url` is
REDIS_URL). A value that does not parse is an error naming the variable; nothing falls back
silently to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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


class SettingsError(ValueError):
    """The environment does not make a valid configuration; the message names each variable."""


class Settings(BaseSettings):
    """Every knob of the service, read from the environment (see `from_env`)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        # REDIS_URL= (set but empty) means "the default", as a shell user would expect.
        env_ignore_empty=True,
        validate_default=True,
    )

    redis_url: str = "redis://localhost:6379/0"
    # Celery's broker when it is not REDIS_URL (e.g. amqp://…): the record and its pub/sub stay on
    # REDIS_URL whatever carries the task messages.
    celery_broker_url: str = ""
    # The Celery app the web and the worker use, "module:attribute" or "module" as for
    # `celery -A`, imported from the current directory; empty = taskstream's own.
    celery_app: str = Field("", pattern=r"^([A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?)?$")
    # Modules imported by the web and the worker at start, so the tasks they define are known
    # by name (the web needs them for submission; the worker to run them).
    task_modules: Annotated[tuple[str, ...], NoDecode] = ()
    # Tasks defined elsewhere that clients may submit, their arguments derived from the
    # function's signature and type hints (@submittable is the in-code way).
    submittable_tasks: Annotated[tuple[str, ...], NoDecode] = ()
    # The demonstration tasks (add, sleep, fail, flaky); false leaves them out.
    demo_tasks: bool = True
    # Redis Sentinel ("host:port,host:port"): when set, the record, the hub and Celery's broker
    # ask these for the master named REDIS_SENTINEL_MASTER, and follow it through a failover.
    # REDIS_URL then gives only the password, database and TLS options of the master.
    redis_sentinels: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    redis_sentinel_master: str = Field("mymaster", min_length=1)
    # A recorded change is acknowledged only once this many replicas have it (Redis WAIT), so a
    # failover cannot lose it; 0 = asynchronous replication, as Redis does by default.
    record_min_replicas: int = Field(0, ge=0)
    # How long a change waits for those replicas before its recording fails (and is retried).
    record_replica_timeout_ms: int = Field(1_000, ge=1)
    # Web processes `make run` and the Procfile start on PORT; 0 = one per CPU core.
    web_concurrency: int = Field(0, ge=0)
    # Where `make run` and the launcher bind the web; with authentication off, keep it loopback.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # The path a reverse proxy publishes the web under (`/jobs`), forwarded unchanged: ASGI's root
    # path, which every link, Location and page URL then starts with. Empty: served at `/`.
    root_path: str = Field("", pattern=r"^(/[^/?#\s]+)*$")
    # Behind a proxy that strips that path and names it in X-Forwarded-Prefix instead: believe the
    # header. Only when the proxy sets it on every request, or clients could choose the links.
    trust_forwarded_prefix: bool = False
    # Reverse proxies whose X-Forwarded-Proto / X-Forwarded-For are believed (addresses or
    # networks, comma-separated): behind a TLS proxy, the session cookie is then Secure.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Host header values the web answers (comma-separated, `*` for any). Default: with
    # authentication off the loopback names only, so a DNS-rebinding page cannot reach it; with
    # authentication on, any.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Prefixes every Redis key, pub/sub channel and Celery queue, so two deployments can share one
    # Redis (channels ignore database numbers, so a database number alone would not separate them).
    key_prefix: str = Field("taskstream", pattern=r"^[^:\s]+$")
    # How long a task and its change log are kept after its latest change.
    task_ttl_seconds: int = Field(86_400, ge=1)
    # How many of a task's latest changes are kept for replay (the contract asks for >= 1000).
    events_retained: int = Field(1_000, ge=1_000)
    # How many changes across all tasks are kept for resuming `GET /events`.
    global_events_retained: int = Field(10_000, ge=1)
    keepalive_seconds: float = Field(15.0, gt=0, le=15)
    # Quart's cut-off for ordinary responses; streams have none.
    response_timeout_seconds: float = Field(60.0, gt=0)
    # What the stream tells EventSource to wait before reconnecting, in milliseconds.
    sse_retry_ms: int = Field(2_000, ge=0)
    # Changes buffered in memory per stream before it falls back to reading the stored log.
    stream_buffer: int = Field(64, ge=1)
    # A client whose socket takes no data for this long is dropped (0 = never).
    stream_write_timeout_seconds: float = Field(30.0, ge=0)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    list_limit_max: int = Field(200, ge=1)
    # Seconds after which an unacknowledged task message is handed to another worker. A task whose
    # worker died is run again after this long; tasks must finish well within it.
    visibility_timeout_seconds: int = Field(3_600, ge=1)
    # Hard and soft limits for one run of a task (0 = none).
    task_time_limit_seconds: float = Field(0.0, ge=0)
    task_soft_time_limit_seconds: float = Field(0.0, ge=0)
    worker_concurrency: int = Field(0, ge=0)
    expose_tracebacks: bool = False
    # A worker is shown offline once its last heartbeat (every 2 s) is older than this.
    worker_offline_seconds: float = Field(6.0, gt=2)
    # Security (see docs/security.md). API_TOKENS turns authentication on:
    # "name:token[:admin],…"; every caller then sees only its own tasks, admins see all.
    api_tokens: str = ""
    # Signs session cookies and stream tokens; required when API_TOKENS is set.
    secret_key: str = ""
    # Keys that signed before SECRET_KEY (comma-separated, newest first): what they signed still
    # verifies, so rotating SECRET_KEY ends no session. Drop them after SESSION_SECONDS.
    previous_secret_keys: Annotated[tuple[str, ...], NoDecode] = ()
    stream_token_seconds: int = Field(300, ge=1)
    session_seconds: int = Field(8 * 3600, ge=1)
    # Origins allowed to call from a browser on another site (comma-separated, exact).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Submissions per caller per window; -1 = the default (600 with authentication, else off).
    rate_limit_per_minute: int = Field(-1, ge=-1)
    rate_limit_window_seconds: int = Field(60, ge=1)
    max_streams_per_caller: int = Field(100, ge=1)
    max_streams_per_process: int = Field(10_000, ge=1)
    max_args_bytes: int = Field(16 * 1024, ge=2)
    # A bearer token for Prometheus scrapers: it reads GET /metrics and nothing else. With
    # authentication on admins read it too; with it off and no METRICS_TOKEN, it is open.
    metrics_token: str = ""
    # A task's arguments are kept with its record for the dashboard up to this size as JSON;
    # larger ones are stored as {"truncated": true, "bytes": N}.
    args_stored_bytes: int = Field(4096, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _host_ports(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        found = []
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port, got {item!r}")
            found.append((host.strip("[]"), int(port)))
        return tuple(found)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        return value

    @field_validator("task_modules", "submittable_tasks", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("task_modules")
    @classmethod
    def _dotted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
                raise ValueError(f"{name!r} is not a dotted name")
        return value

    @field_validator("trusted_proxies", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip().lower() for v in value.split(",") if v.strip())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or network") from None
        return value

    @property
    def hosts_allowed(self) -> frozenset[str] | None:
        """The Host names answered, None for any."""
        if self.allowed_hosts:
            return None if "*" in self.allowed_hosts else frozenset(self.allowed_hosts)
        return None if self.auth_enabled else frozenset({"localhost", "127.0.0.1", "::1"})

    @field_validator("previous_secret_keys", mode="before")
    @classmethod
    def _keys_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("api_tokens")
    @classmethod
    def _token_entries(cls, value: str) -> str:
        _parse_tokens(value)
        return value

    @field_validator("secret_key", "metrics_token")
    @classmethod
    def _long_secret(cls, value: str) -> str:
        if value and len(value) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be {MIN_SECRET_LENGTH} characters or more")
        return value

    @field_validator("previous_secret_keys")
    @classmethod
    def _long_secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(key) < MIN_SECRET_LENGTH for key in value):
            raise ValueError(f"each key must be {MIN_SECRET_LENGTH} characters or more")
        return value

    @model_validator(mode="after")
    def _secret_for_tokens(self) -> Settings:
        if self.api_tokens and not self.secret_key:
            raise ValueError(
                f"API_TOKENS needs SECRET_KEY ({MIN_SECRET_LENGTH} characters or more) to sign with"
            )
        return self

    @property
    def token_entries(self) -> list[tuple[str, str, bool]]:
        """API_TOKENS as (name, token, admin) entries."""
        return _parse_tokens(self.api_tokens)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The settings from the environment, with `overrides` (field names) taking precedence.

        Raises SettingsError naming each variable that is wrong.
        """
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    @property
    def web_processes(self) -> int:
        return self.web_concurrency or os.cpu_count() or 1

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)

    @property
    def submissions_per_window(self) -> int:
        if self.rate_limit_per_minute >= 0:
            return self.rate_limit_per_minute
        return 600 if self.auth_enabled else 0


# Tokens and keys: long enough that guessing is hopeless (`openssl rand -hex 16` gives 32).
MIN_SECRET_LENGTH = 32
# Never echoed in an error, which may end up in a log.
_SECRETS = {"API_TOKENS", "SECRET_KEY", "PREVIOUS_SECRET_KEYS", "METRICS_TOKEN"}


def _parse_tokens(value: str) -> list[tuple[str, str, bool]]:
    entries = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0] or (len(parts) == 3 and parts[2] != "admin"):
            raise ValueError(f"entries are name:token[:admin] (the one for {parts[0]!r} is not)")
        if len(parts[1]) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"the token of {parts[0]!r} is shorter than {MIN_SECRET_LENGTH} characters"
            )
        entries.append((parts[0], parts[1], len(parts) == 3))
    return entries


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        name = "_".join(str(part) for part in err["loc"][:1]).upper()
        given = err.get("input")
        shown = (
            f" (got {given!r})"
            if isinstance(given, str | int | float) and name and name not in _SECRETS
            else ""
        )
        problems.append(f"{name or 'settings'}: {err['msg']}{shown}")
    return "invalid configuration: " + "; ".join(problems)
