"""How snapshots, notices and errors look: JSON lines, plain lines, or a live bar on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import sys
import unicodedata
from typing import Any, Protocol, TextIO

Snapshot = dict[str, Any]


def percent_of(snap: Snapshot) -> float | None:
    if snap.get("state") == "SUCCESS":
        return 100.0
    progress = snap.get("progress") or {}
    percent = progress.get("percent")
    return float(percent) if isinstance(percent, int | float) else None


# Control characters (C0, DEL, C1) of text a task wrote: shown as escapes, so that a message
# cannot clear the screen, move the cursor or set the window's title (ESC, CSI), nor break a line.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """`text` as one line a terminal shows as it is."""
    return text.translate(_CONTROLS)


def message_of(snap: Snapshot) -> str:
    """The one line of words worth showing beside the state."""
    error = snap.get("error")
    # A RETRY or FAILURE says why; otherwise the task's own progress message, if any.
    if error and snap.get("state") in ("RETRY", "FAILURE"):
        return error_text(error)
    progress = snap.get("progress") or {}
    return printable(str(progress.get("message") or ""))


def error_text(error: Any) -> str:
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
        text = f"{kind}: {message}" if kind and message else str(message or kind or error)
    else:
        text = str(error)
    return printable(text)


def _columns(char: str) -> int:
    """How many terminal columns a character takes: two for East Asian wide ones, none for
    combining marks."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(text: str, columns: int) -> str:
    """`text` cut to at most `columns` terminal columns (not characters)."""
    used = 0
    for index, char in enumerate(text):
        used += _columns(char)
        if used > columns:
            return text[:index]
    return text


def _percent_text(percent: float | None) -> str:
    return "   -" if percent is None else f"{percent:3.0f}%"


def plain_line(snap: Snapshot) -> str:
    """`PROGRESS seq=7    40%  step 4 of 10`: state, seq, percent, message."""
    line = f"{snap['state']:<8} seq={snap['seq']:<4} {_percent_text(percent_of(snap))}"
    message = message_of(snap)
    return f"{line}  {message}" if message else line


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class Renderer(Protocol):
    def show(self, snap: Snapshot) -> None: ...

    def notice(self, text: str) -> None: ...

    def close(self) -> None: ...


class JsonLines:
    """One snapshot per line on stdout, exactly as the service sent it, for scripts."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err

    def show(self, snap: Snapshot) -> None:
        self.out.write(dumps(snap) + "\n")
        self.out.flush()

    def notice(self, text: str) -> None:
        self.err.write(f"taskctl: {text}\n")
        self.err.flush()

    def close(self) -> None:
        pass


class PlainLines(JsonLines):
    """One readable line per change, for logs and pipes."""

    def show(self, snap: Snapshot) -> None:
        self.out.write(plain_line(snap) + "\n")
        self.out.flush()


class LiveBar:
    """One line redrawn in place: task, state, a bar, percent and message."""

    _CLEAR = "\r\x1b[K"

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err
        self._line = ""
        encoding = (getattr(out, "encoding", None) or "").lower()
        self._full, self._empty = ("█", "░") if "utf" in encoding else ("#", "-")

    def _bar(self, percent: float | None, width: int) -> str:
        filled = 0 if percent is None else round(width * min(max(percent, 0.0), 100.0) / 100)
        return self._full * filled + self._empty * (width - filled)

    def _compose(self, snap: Snapshot) -> str:
        columns = shutil.get_terminal_size((80, 24)).columns
        percent = percent_of(snap)
        head = f"{snap.get('task', '')} {str(snap.get('id', ''))[:8]} {snap['state']:<8}"
        bar_width = max(10, min(30, columns - sum(map(_columns, head)) - 30))
        line = f"{head} {self._bar(percent, bar_width)} {_percent_text(percent)}"
        message = message_of(snap)
        if message:
            line = f"{line}  {message}"
        # A line that wraps cannot be redrawn in place; keep it inside the terminal.
        return fit(line, max(columns - 1, 20))

    def show(self, snap: Snapshot) -> None:
        self._line = self._compose(snap)
        self.out.write(self._CLEAR + self._line)
        if snap["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            self.out.write("\n")
            self._line = ""
        self.out.flush()

    def notice(self, text: str) -> None:
        if self._line:
            self.out.write(self._CLEAR)
            self.out.flush()
        self.err.write(f"taskctl: {text}\n")
        self.err.flush()
        if self._line:
            self.out.write(self._line)
            self.out.flush()

    def close(self) -> None:
        # Leave the shell prompt on a line of its own after an interruption.
        if self._line:
            self.out.write("\n")
            self.out.flush()
            self._line = ""


def choose(json_lines: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> Renderer:
    if json_lines:
        return JsonLines(out, err)
    if out.isatty() and _terminal_can_redraw():
        return LiveBar(out, err)
    return PlainLines(out, err)


def _terminal_can_redraw() -> bool:
    return os.environ.get("TERM", "") != "dumb"


def problem_text(status: int, problem: dict[str, Any]) -> str:
    """A problem-details body as a few readable lines."""
    title = problem.get("title") or "Error"
    lines = [f"{title} ({status})"]
    if problem.get("detail"):
        lines[0] += f": {problem['detail']}"
    for error in problem.get("errors") or []:
        if isinstance(error, dict):
            field = error.get("field") or "?"
            lines.append(f"  - {field}: {error.get('message', '')}")
        else:
            lines.append(f"  - {error}")
    shown = {"type", "title", "status", "detail", "errors", "instance"}
    for key, value in problem.items():
        if key in shown:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        lines.append(f"  {key}: {text}")
    return "\n".join(lines)
