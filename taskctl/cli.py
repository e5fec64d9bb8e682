"""The `taskctl` command: argument parsing, one function per subcommand, and the exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import httpx

from taskstream.client import __version__, exitcodes, render
from taskstream.client.client import Client
from taskstream.client.errors import ProblemError, Unreachable
from taskstream.client.follow import TERMINAL, FollowOptions
from taskstream.client.params import ParamError, parse_params, parse_value

DEFAULT_URL = "http://localhost:8000"
URL_VARIABLE = "TASKSTREAM_URL"
# A deployment with authentication on wants a bearer token.
TOKEN_VARIABLE = "TASKSTREAM_TOKEN"

_DESCRIPTION = "Submit tasks to a taskstream service and follow them live."
_EPILOG = f"""\
task arguments (submit):
  key=value      the value is JSON when it parses as JSON, else a string:
                 seconds=2 is the number 2, message=hello the string "hello"
  key:=json      the value must be JSON (an error otherwise): tags:='["a", "b"]'
  key='"2"'      a JSON string, for text that would otherwise parse as a number
  --arg VALUE    a positional argument (repeatable, in order), read like key=value

exit codes:
  {exitcodes.OK}    success; for submit --follow and watch, the task ended SUCCESS
  {exitcodes.FAILURE}    the task ended FAILURE (its error is on stderr)
  {exitcodes.REVOKED}    the task ended REVOKED (cancelled, or revoked by Celery: why on stderr)
  {exitcodes.USAGE}    bad command line, or the service refused the request (reason on stderr)
  {exitcodes.UNAVAILABLE}    the service could not be reached or failed (for longer than --patience,
       when following)
  {exitcodes.INTERRUPTED}  interrupted (Ctrl-C)

The service is --url, else ${URL_VARIABLE}, else {DEFAULT_URL}.
"""


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 on a usage error, which is REVOKED here.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On the subcommands too, so `taskctl status ID --url ...` works as well as the other order;
    # SUPPRESS keeps a subcommand's default from hiding a value given before the subcommand.
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument(
        "--url",
        default=default(None),
        help=f"the service's base URL (default: ${URL_VARIABLE}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print snapshots as JSON lines on stdout, one per change",
    )


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patience",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to keep trying while the service is unreachable (default: 60)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="taskctl",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskctl {__version__}")
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        _common(sub, top=False)
        return sub

    submit = command("submit", "submit a task, and optionally follow it to its end")
    submit.add_argument("task", metavar="NAME", help="the task's name (see `taskctl types`)")
    submit.add_argument(
        "params", nargs="*", default=[], metavar="KEY=VALUE", help="a keyword argument (see below)"
    )
    submit.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        metavar="VALUE",
        help="a positional argument; repeat for several",
    )
    submit.add_argument("-f", "--follow", action="store_true", help="follow the task until it ends")
    _follow_options(submit)
    submit.epilog = _EPILOG
    submit.formatter_class = argparse.RawDescriptionHelpFormatter

    watch = command("watch", "follow a task live until it ends")
    watch.add_argument("id", metavar="ID")
    _follow_options(watch)

    status = command("status", "show a task as it stands now")
    status.add_argument("id", metavar="ID")

    cancel = command("cancel", "cancel a task that has not finished")
    cancel.add_argument("id", metavar="ID")

    listing = command("list", "list recent tasks, newest first")
    listing.add_argument(
        "--state",
        action="append",
        default=[],
        help="only tasks in this state (repeat, or separate with commas)",
    )
    listing.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME",
        help="only tasks of this name (repeat, or separate with commas)",
    )
    listing.add_argument("--limit", type=int, help="at most this many tasks (default: 20)")
    listing.add_argument("--cursor", help="the page after the one that printed this cursor")

    command("types", "list the tasks that may be submitted, with their arguments")
    return parser


# --- the commands ----------------------------------------------------------------------------


def _follow(
    api: Client, task_id: str, opts: argparse.Namespace, first: dict[str, Any] | None
) -> int:
    out = render.choose(opts.json)
    try:
        if first is not None:
            out.show(first)
            if first["state"] in TERMINAL:
                return _outcome(first, opts.json)
        after = int(first["seq"]) if first is not None else None
        options = FollowOptions(patience=opts.patience)
        with api.follow(task_id, after=after, options=options, on_notice=out.notice) as follow:
            for snap in follow:
                out.show(snap)
            final = follow.final
    finally:
        out.close()
    assert final is not None
    return _outcome(final, opts.json)


def _outcome(snap: dict[str, Any], json_lines: bool) -> int:
    state = snap["state"]
    if state == "SUCCESS":
        if not json_lines:
            print(f"result: {render.dumps(snap.get('result'))}")
    elif state == "FAILURE":
        _error(f"task {snap['id']} failed: {render.error_text(snap.get('error'))}")
    elif state == "REVOKED" and snap.get("error"):
        # Revoked by Celery itself (expired, terminated) or ended by raising Ignore: say why.
        _error(f"task {snap['id']} was revoked: {render.error_text(snap['error'])}")
    elif state == "REVOKED":
        _error(f"task {snap['id']} was cancelled (REVOKED)")
    return exitcodes.FOR_STATE[state]


def cmd_submit(api: Client, opts: argparse.Namespace) -> int:
    try:
        kwargs = parse_params(opts.params)
    except ParamError as exc:
        return _usage(str(exc))
    args = [parse_value(value) for value in opts.args]
    snap = api.submit(opts.task, *args, **kwargs)
    if opts.follow:
        return _follow(api, snap["id"], opts, first=snap)
    print(render.dumps(snap) if opts.json else snap["id"])
    if not opts.json and sys.stderr.isatty():
        _error(f"submitted {snap['task']}; follow it with: taskctl watch {snap['id']}")
    return exitcodes.OK


def cmd_watch(api: Client, opts: argparse.Namespace) -> int:
    return _follow(api, opts.id, opts, first=None)


_STATUS_FIELDS = ("id", "task", "state", "seq", "retries")
_TIMES = ("submitted_at", "started_at", "finished_at", "updated_at")


def cmd_status(api: Client, opts: argparse.Namespace) -> int:
    snap = api.get(opts.id)
    if opts.json:
        print(render.dumps(snap))
        return exitcodes.OK
    rows: list[tuple[str, str]] = [(name, str(snap.get(name))) for name in _STATUS_FIELDS]
    percent, message = render.percent_of(snap), render.message_of(snap)
    if percent is not None or message:
        shown = f"{percent:.0f}%" if percent is not None else ""
        rows.append(("progress", f"{shown}  {message}".strip()))
    rows += [(name.removesuffix("_at"), snap[name]) for name in _TIMES if snap.get(name)]
    if snap.get("state") == "SUCCESS":
        rows.append(("result", render.dumps(snap.get("result"))))
    if snap.get("error"):
        rows.append(("error", render.error_text(snap["error"])))
    width = max(len(name) for name, _ in rows) + 1
    for name, value in rows:
        print(f"{name + ':':<{width}} {value}")
    return exitcodes.OK


def cmd_cancel(api: Client, opts: argparse.Namespace) -> int:
    snap = api.cancel(opts.id)
    print(render.dumps(snap) if opts.json else f"{snap['id']} {snap['state']}")
    return exitcodes.OK


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def cmd_list(api: Client, opts: argparse.Namespace) -> int:
    states = [s.upper() for s in _split(opts.state)]
    page = api.list(state=states, task=_split(opts.task), limit=opts.limit, cursor=opts.cursor)
    items = page.items
    if opts.json:
        for snap in items:
            print(render.dumps(snap))
    elif items:
        rows = [
            (
                str(s["id"]),
                str(s["task"]),
                str(s["state"]),
                _percent_cell(s),
                str(s.get("updated_at") or ""),
            )
            for s in items
        ]
        header = ("ID", "TASK", "STATE", "DONE", "UPDATED")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    else:
        _error("no tasks")
    if page.next:
        _error(f"more: repeat with --cursor {page.next}")
    return exitcodes.OK


def _percent_cell(snap: dict[str, Any]) -> str:
    percent = render.percent_of(snap)
    return "" if percent is None else f"{percent:.0f}%"


def cmd_types(api: Client, opts: argparse.Namespace) -> int:
    types = api.task_types()
    if opts.json:
        for task_type in types:
            print(render.dumps(task_type))
        return exitcodes.OK
    for index, task_type in enumerate(types):
        if index:
            print()
        print(f"{task_type['name']}  {task_type.get('description') or ''}".rstrip())
        schema = task_type.get("schema") or {}
        required = set(schema.get("required") or [])
        for name, prop in (schema.get("properties") or {}).items():
            print(f"  {name}: {_describe_property(prop, name in required)}")
    return exitcodes.OK


def _describe_property(prop: dict[str, Any], required: bool) -> str:
    kind = prop.get("type")
    if kind is None and prop.get("anyOf"):
        kind = " | ".join(str(p.get("type", "?")) for p in prop["anyOf"])
    parts = [str(kind or "any")]
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None or high is not None:
        parts.append(f"{'' if low is None else low}..{'' if high is None else high}")
    if "default" in prop:
        parts.append(f"default {render.dumps(prop['default'])}")
    elif required:
        parts.append("required")
    text = ", ".join(parts)
    description = prop.get("description")
    return f"{text}  {description}" if description else text


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "watch": cmd_watch,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "list": cmd_list,
    "types": cmd_types,
}


# --- entry point -----------------------------------------------------------------------------


def _error(text: str) -> None:
    sys.stderr.write(f"taskctl: {text}\n")
    sys.stderr.flush()


def _usage(text: str) -> int:
    _error(text)
    return exitcodes.USAGE


def _service_url(opts: argparse.Namespace) -> str | None:
    url = opts.url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
    try:
        parsed = httpx.URL(url)  # the client's own parse: a bad port or bracket is refused here
    except (ValueError, httpx.InvalidURL):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    return url


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    opts, extra = parser.parse_known_args(argv)
    # argparse stops collecting KEY=VALUE at the first option, so `submit sleep seconds=2 --follow
    # steps=4` leaves `steps=4` over; it belongs to the task arguments all the same.
    if extra and opts.command == "submit" and not any(item.startswith("-") for item in extra):
        opts.params += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    # Task text is anyone's: on a terminal or a pipe that cannot show a character, an escape
    # instead of a crash.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        opts = _parse(parser, argv)
        if opts.command is None:
            parser.print_help(sys.stderr)
            return exitcodes.USAGE
        url = _service_url(opts)
        if url is None:
            return _usage(f"not an http(s) URL: {opts.url or os.environ.get(URL_VARIABLE)!r}")
        token = os.environ.get(TOKEN_VARIABLE) or None
        with Client(url, token, user_agent=f"taskctl/{__version__}") as api:
            return COMMANDS[opts.command](api, opts)
    except ProblemError as exc:
        _error(render.problem_text(exc.status, exc.problem))
        # A 429 is a refusal too (the README's 3), though the follower waits it out.
        refused = exc.client_error or exc.status == 429
        return exitcodes.USAGE if refused else exitcodes.UNAVAILABLE
    except (ValueError, UnicodeError, httpx.InvalidURL) as exc:
        # What the command line gave cannot be sent (a number past a float's range, text that
        # is not Unicode, a token that cannot be a header).
        return _usage(f"cannot send that: {exc}")
    except Unreachable as exc:
        _error(str(exc))
        return exitcodes.UNAVAILABLE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`taskctl list | head`): nobody is left to tell. Point stdout at
        # /dev/null so the interpreter's final flush does not complain about it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
