"""The Celery side: the app, the registered tasks, and the signal handlers that record changes."""
