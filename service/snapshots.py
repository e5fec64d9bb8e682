"""Snapshots as clients see them: the stored JSON plus links, which only the web can write.

The record stores no URLs: a task sent with `.delay()` by some producer knows nothing of where
the API is mounted. Links are added here, with the root path the request came in under, by
splicing text onto the stored JSON once (never parse and re-encode a snapshot per client).
"""

from __future__ import annotations

import json
from functools import lru_cache
from urllib.parse import quote


def links(task_id: str, root: str = "") -> dict[str, str]:
    base = f"{root}/tasks/{quote(task_id, safe='')}"
    return {"self": base, "events": f"{base}/events"}


@lru_cache(maxsize=16_384)
def _links_json(task_id: str, root: str) -> str:
    # The same few tasks change again and again: encode their links once, not per change.
    return json.dumps(links(task_id, root), separators=(",", ":"), ensure_ascii=False)


def linked(data: str, task_id: str, root: str = "") -> str:
    """The stored snapshot `data` (a JSON object) with its `links` member appended."""
    return f'{data[:-1]},"links":{_links_json(task_id, root)}}}'
