"""The project's Celery app: its own broker and queue, then taskstream's wiring on top."""

import os

import taskstream
from celery import Celery

app = Celery("myproj")
# The project's own configuration; taskstream.init_celery leaves broker, queues and routing alone.
app.conf.update(
    broker_url=os.environ.get("MYPROJ_BROKER_URL", "redis://localhost:6379/0"),
    task_default_queue=os.environ.get("MYPROJ_QUEUE", "myproj"),
)
# Last, after the app's own configuration: signals, JSON only, late acks, the record's settings.
taskstream.init_celery(app)
