"""The app factory: `create_app()` builds the web app and its Celery app from one Settings."""

from __future__ import annotations

from quart import Quart

from service import openapi, problems
from service.config import Settings
from service.routes import bp
from service.services import Services
from tasks.celery_app import create_celery


def create_app(settings: Settings | None = None) -> Quart:
    settings = settings or Settings.from_env()
    app = Quart(__name__, static_folder="static")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        # Bodies are small: a client that trickles one in is not waited on for long.
        BODY_TIMEOUT=15,
        RESPONSE_TIMEOUT=settings.response_timeout_seconds,
        JSON_SORT_KEYS=False,
    )
    svc = Services(settings=settings, celery=create_celery(settings))
    app.extensions["taskstream"] = svc
    app.extensions["celery"] = svc.celery
    problems.register(app)
    app.register_blueprint(bp)
    openapi.install(app)

    @app.before_serving
    async def _start() -> None:
        await svc.start()

    @app.after_serving
    async def _stop() -> None:
        await svc.stop()

    return app
