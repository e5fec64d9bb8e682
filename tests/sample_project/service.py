"""The project's own service layer (many projects have a module named `service`): it sends work
the way Celery projects do, with `.delay()` and canvas, and knows nothing of taskstream.

    python -c "import service; print(service.start_add(2, 3))"
"""

from celery import chain, chord

import myproj  # noqa: F401  (the project's Celery app, which sends these)
from tasks import add, crunch, total


def start_add(x: int, y: int) -> str:
    return add.delay(x, y).id


def start_crunch(n: int) -> str:
    return crunch.delay(n).id


def start_chain() -> list[str]:
    """add(1, 2) then add(result, 10): the ids of both, in order."""
    result = chain(add.s(1, 2), add.s(10)).apply_async()
    return [result.parent.id, result.id]


def start_chord(n: int) -> tuple[list[str], str]:
    """add(i, i) for i below n, summed by total: the header's ids and the callback's."""
    result = chord(add.s(i, i) for i in range(n))(total.s())
    return [member.id for member in result.parent.results], result.id
