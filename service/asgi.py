"""The ASGI entry point Hypercorn serves: `hypercorn service.asgi:app`."""

import logging
import os

from service.app import create_app

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO"),
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)

app = create_app()
