"""The app factory: `create_app()` builds the web app and its Celery app from one Settings."""

from __future__ import annotations

from quart import Quart, Response, request

from taskstream.celery_app import load_celery
from taskstream.settings import Settings
from taskstream.web import openapi, problems, security
from taskstream.web.auth import Authenticator
from taskstream.web.cursors import Cursors
from taskstream.web.direct import FindConnection
from taskstream.web.disconnects import EndOnDisconnect
from taskstream.web.embed import RootPath
from taskstream.web.lean import LeanHTTPConnection, LeanRequest
from taskstream.web.ops_routes import bp as ops_bp
from taskstream.web.proxies import ForwardedFromTrustedProxies, networks
from taskstream.web.routes import bp
from taskstream.web.security import StreamSlots
from taskstream.web.services import Services
from taskstream.web.write_timeout import WriteTimeout


def create_app(settings: Settings | None = None, *, handle_signals: bool = False) -> Quart:
    """The web app. `handle_signals` (the served app, not tests) ends open streams on SIGTERM."""
    settings = settings or Settings.from_env()
    app = Quart(__name__, static_folder="static")
    # Less memory per open request (see lean.py).
    app.asgi_http_class = LeanHTTPConnection
    app.request_class = LeanRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        # Bodies are small: a client that trickles one in is not waited on for long.
        BODY_TIMEOUT=15,
        RESPONSE_TIMEOUT=settings.response_timeout_seconds,
    )
    svc = Services(settings=settings, celery=load_celery(settings))
    svc.auth = Authenticator(settings, clock=lambda: svc.clock())
    svc.cursors = Cursors(settings.secret_key, settings.previous_secret_keys)
    svc.slots = StreamSlots(settings.max_streams_per_caller, settings.max_streams_per_process)
    app.extensions["taskstream"] = svc
    app.extensions["celery"] = svc.celery
    problems.register(app)
    security.install(app, svc.auth, settings.cors_origins, settings.hosts_allowed)
    app.register_blueprint(bp)
    app.register_blueprint(ops_bp)
    openapi.install(app)
    # JSON answers keep their keys in order: a task's parameters in /task-types in the order
    # positional `args` bind them. Set on the JSON provider quart-schema installs (Quart 0.22
    # ignores the JSON_SORT_KEYS setting).
    app.json.sort_keys = False  # type: ignore[attr-defined]
    rules = list(app.url_map.iter_rules())
    svc.metrics.label_sets({r.rule for r in rules}, {m for r in rules for m in r.methods or ()})

    timed = WriteTimeout(
        app.asgi_app, settings.stream_write_timeout_seconds, svc.metrics.dropped_client
    )
    app.asgi_app = FindConnection(  # type: ignore[method-assign, assignment]
        ForwardedFromTrustedProxies(
            RootPath(EndOnDisconnect(timed), settings.trust_forwarded_prefix),
            networks(settings.trusted_proxies),
        )
    )

    @app.after_request
    async def _count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule else None
        svc.metrics.request(rule, request.method, response.status_code)
        return response

    @app.before_serving
    async def _start() -> None:
        await svc.start()
        if handle_signals:
            svc.end_streams_on_shutdown_signals()

    @app.after_serving
    async def _stop() -> None:
        await svc.stop()

    return app
