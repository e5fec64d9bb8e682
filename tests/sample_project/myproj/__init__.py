"""A Celery project of the usual shape, for the tests and the README's walk-through.

Importing the package sets up its Celery app (the pattern Celery documents for Django), so that
`@shared_task` tasks anywhere in the project send with it.
"""

from myproj.celery import app as celery_app

__all__ = ["celery_app"]
