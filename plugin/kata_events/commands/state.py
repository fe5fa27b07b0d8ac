"""`kata-events state show|reset`: look at a run's state file, or move it aside (SHOW and RESET
below say what each prints or moves).

``show`` never prints the whole token (it reads the events of the subscription with the client
certificate), takes no lock and is safe beside a running run. ``reset`` takes the state file's lock
(so it is refused while a run holds it) and only renames: a backup can be renamed back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, List, Optional

from kata_events.commands.locate import RunFiles, add_location_arguments, locate
from kata_events.exits import ExitStatus, UserError

SHOW = """\
show:  print what the state file holds (Central Node, external system id, filter, token age,
       progress in the page after it; never the whole token). Safe beside a running run.
"""
RESET = """\
reset: move the state file (and its progress and status records) aside as timestamped backups,
       so the next run starts a new subscription. Refused (exit 75) while a run holds the lock.
"""
#: `cli` leaves --help to `add_arguments`.
OWN_HELP = True
WHICH = "Give the run's --config or --state-file.\n"
DESCRIPTION = SHOW + RESET + WHICH


class _ActionHelp(argparse.Action):
    """``--help``: the help of the action given before it (``state reset --help``), else of both."""

    def __init__(self, option_strings: List[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *_: Any) -> None:
        action = getattr(namespace, "action", None)
        if action in ("show", "reset"):
            parser = argparse.ArgumentParser(
                prog=f"{parser.prog} {action}",
                description=(SHOW if action == "show" else RESET) + WHICH,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            _add_options(parser, action)
        parser.print_help()
        parser.exit()


def _add_options(parser: argparse.ArgumentParser, action: Optional[str]) -> None:
    add_location_arguments(parser)
    if action != "reset":
        parser.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help="show: lines for people (text) or a JSON object (json). Default: text.",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``state`` takes an action, then where the run's files are."""
    # Its own --help, so that `state reset --help` shows reset's alone.
    parser.add_argument("-h", "--help", action=_ActionHelp, help="show this help message and exit")
    parser.add_argument("action", choices=("show", "reset"), help="show the state, or reset it")
    _add_options(parser, None)


def _show(files: RunFiles, fmt: str) -> int:
    from kata_events.commands.status import running_pid
    from kata_events.state.reading import parse_stamp
    from kata_events.state.store import TokenStore, short_token

    sub = TokenStore(files.state, url="", external_system_id="").stored()
    pid = running_pid(files)
    if sub is None:
        why = (
            f" yet: a run (pid {pid}) holds its lock and has not committed a token yet (it is "
            "connecting, waiting for approval or retrying: see its log, or `kata-events status`); "
            "show it again after its first page"
            if pid
            else ": no run has committed there yet (or --config / --state-file point elsewhere)"
        )
        raise UserError(f"no state file at {files.state}{why}", ExitStatus.NO_INPUT)
    saved = parse_stamp(sub.saved_at)
    # Read as a run of this subscription would resume: the newest valid progress record.
    own = TokenStore(files.state, url=sub.url, external_system_id=sub.external_system_id, filter=sub.filter)
    own.load()
    point = own.resume_point()[0]
    delivered = point.events if point is not None and point.token == sub.token else 0
    info = {
        "state_file": str(files.state),
        "url": sub.url or None,
        "external_system_id": sub.external_system_id or None,
        "filter": sub.filter,
        "token": short_token(sub.token) if sub.token else None,
        "token_length": len(sub.token) if sub.token else 0,
        "saved_at": sub.saved_at or None,
        "token_age_seconds": None if saved is None else round(time.time() - saved, 1),
        "delivered_in_page": delivered,
        "running_pid": pid,
    }
    if fmt == "json":
        sys.stdout.write(json.dumps(info, ensure_ascii=False) + "\n")
        return 0
    age = info["token_age_seconds"]
    lines = [
        f"state file:          {info['state_file']}",
        f"central node:        {info['url'] or '(not recorded: imported from a plain token file)'}",
        f"external system id:  {info['external_system_id'] or '(not recorded)'}",
        f"filter:              {info['filter']!r}" + (" (all events)" if not info["filter"] else ""),
    ]
    if info["token"] is None:
        lines.append("token:               none (the next run starts a new subscription)")
    else:
        when = f", saved at {info['saved_at']} ({age / 60:.0f} min ago)" if age is not None else ""
        lines += [
            f"token:               {info['token']} ({info['token_length']} characters){when}",
            f"progress in page:    {info['delivered_in_page']} events of the answer to that token delivered",
        ]
    lines.append(f"run:                 {'running, pid ' + str(pid) if pid else 'not running'}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _reset(files: RunFiles) -> int:
    from kata_events.state.store import StateLocked, TokenStore

    if not files.state.exists():
        sys.stderr.write(
            f"kata-events: no state file at {files.state}: nothing to reset (the next run starts a "
            "new subscription anyway)\n"
        )
        return 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved: List[str] = []
    try:
        with TokenStore(files.state, url="", external_system_id=""):  # the lock, while files move
            for path in (files.state, files.progress, files.status):
                free = backup = path.with_name(f"{path.name}.{stamp}.bak")
                n = 0
                while backup.exists():  # a reset in the same second made that name already
                    n += 1
                    backup = free.with_name(f"{free.name}.{n}")
                try:
                    os.rename(path, backup)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise UserError(
                        f"cannot move {path} aside: {exc.strerror or exc}; fix the permissions of "
                        f"{path.parent}",
                        ExitStatus.CANT_CREATE,
                    ) from None
                moved.append(f"{path} -> {backup}")
    except StateLocked as exc:
        who = f"process {exc.holder_pid}" if exc.holder_pid else "another process"
        raise UserError(
            f"state file {files.state} is in use by {who}: stop that run first (systemctl stop, "
            "or the shipper that starts it), then reset",
            ExitStatus.TEMP_FAIL,
        ) from None
    sys.stderr.write(
        "kata-events: moved " + "; ".join(moved) + ". The next run starts a new subscription; to "
        "undo, rename the backups back before it starts\n"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    files = locate(args, os.environ)
    return _show(files, args.format) if args.action == "show" else _reset(files)
