"""What `celery -A tasks.worker worker` loads: the Celery app, configured from the environment."""

from tasks.celery_app import create_celery

app = create_celery()
