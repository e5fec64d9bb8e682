"""What the client raises: the service's problem details, or no answer at all."""

from __future__ import annotations

from typing import Any

import httpx


class TaskstreamError(Exception):
    """Anything the client raises."""


class ProblemError(TaskstreamError):
    """The service answered with an error status. `problem` is its problem-details body: `type`,
    `title`, `status`, `detail`, and any extension members (`errors`, `available`, `state`...)."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {self.title}" + (f": {self.detail}" if self.detail else ""))

    @property
    def type(self) -> str:
        return str(self.problem.get("type") or "about:blank")

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or httpx.codes.get_reason_phrase(self.status))

    @property
    def detail(self) -> str | None:
        detail = self.problem.get("detail")
        return None if detail is None else str(detail)

    @property
    def client_error(self) -> bool:
        """Asking again will not help (a 4xx other than the ones that mean "later")."""
        return 400 <= self.status < 500 and self.status not in (408, 425, 429)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        problem: dict[str, Any] = {}
        if "json" in response.headers.get("content-type", ""):
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                problem = body
        if not problem:
            # Not the service's own answer (a proxy's page, say): keep a little of it to show.
            text = response.text.strip()
            problem = {"detail": text[:300]} if text else {}
        return cls(response.status_code, problem)


class Unreachable(TaskstreamError):
    """No usable answer from the service at all."""


class NotTheService(Unreachable):
    """Something answered, but not the service's API: a redirect (http to https, say), or a page
    that is not JSON (a proxy's sign-in page). The URL is probably not the service's."""

    @classmethod
    def of(cls, response: httpx.Response) -> NotTheService:
        url = safe_url(str(response.request.url))
        if response.is_redirect:
            where = safe_url(response.headers.get("location", "?"))
            return cls(f"{url} answered {response.status_code}, a redirect to {where}: "
                       "use that URL as the service's")  # fmt: skip
        kind = response.headers.get("content-type") or "no content type"
        return cls(f"{url} answered {response.status_code} with {kind}, not the taskstream API")


def safe_url(url: str) -> str:
    """`url` without a password, for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return url
    if not parsed.password:
        return url
    return str(parsed.copy_with(password="***"))


def describe(exc: BaseException) -> str:
    """A short reason for a transport failure, for one line on stderr."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
