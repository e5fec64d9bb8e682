"""What `celery -A taskstream.worker worker` loads: the app, configured from the environment."""

from taskstream.celery_app import create_celery

app = create_celery()
