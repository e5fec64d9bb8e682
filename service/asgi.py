"""The ASGI entry point Hypercorn serves: `hypercorn service.asgi:app`."""

import logging
import os

from service.app import create_app
from service.launch import raise_open_file_limit

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO"),
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)

raise_open_file_limit()
app = create_app()
