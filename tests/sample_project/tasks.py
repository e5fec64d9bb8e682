"""The project's tasks: plain Celery, with nothing of taskstream's in them.

The module is called `tasks`, as in countless projects, and is found through TASK_MODULES=tasks.
"""

import time

from celery import shared_task


@shared_task
def add(x: int, y: int) -> int:
    """Adds two numbers."""
    return x + y


@shared_task
def total(numbers: list[int]) -> int:
    """Sums a list: a chord's callback gets its header's results this way."""
    return sum(numbers)


@shared_task(bind=True)
def crunch(self, n: int = 5, pause: float = 0.05) -> dict:
    """Works in `n` steps, reporting each the way Celery users do."""
    for i in range(1, n + 1):
        time.sleep(pause)
        self.update_state(state="PROGRESS", meta={"current": i, "total": n})
    return {"crunched": n}


@shared_task
def report(title: str, pages: int = 1, draft: bool = False) -> str:
    """Writes a report of `pages` pages."""
    return f"{title}: {pages} page(s){' (draft)' if draft else ''}"
