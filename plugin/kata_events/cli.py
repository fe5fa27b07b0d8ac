"""Command line entry point: parses arguments, wires the pieces, turns failures into exit codes.

Each subcommand lives in its own module; this one only dispatches. It never writes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import sys
from typing import NoReturn, Optional, Sequence

from kata_events import __version__
from kata_events.exits import ExitStatus, UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE) as the exit-code table says, not 2."""

    #: Whether a usage error is a ``fatal`` log line (``run``: its stderr is the shipper's log).
    logs_usage_error = False

    def error(self, message: str) -> NoReturn:
        if self.logs_usage_error:
            see = "" if f"`{self.prog} --help`" in message else f"; see `{self.prog} --help`"
            usage = self.format_usage().strip()
            self.exit(_fatal_line(sys.argv[1:], message + see, ExitStatus.USAGE, "usage", usage=usage))
        self.print_usage(sys.stderr)
        self.exit(int(ExitStatus.USAGE), f"{self.prog}: error: {message}\n")


#: Each subcommand and its one-line summary. Its module, `kata_events.commands.<name>` (the emulator's
#: own cli), is imported only when that subcommand runs.
COMMANDS = {
    "run": "stream events to stdout (the main job)",
    "emulator": "run a local Central Node Events API emulator",
    "demo": "try it: the emulator and the emitter together, printing events",
    "init": "make an external system id, key, certificate and config file",
    "check": "check a set-up: config, files, network, TLS, approval, filter, state",
    "status": "for monitoring: OK/WARNING/CRITICAL from local files, lag",
    "state": "show the state file, or reset it (a new subscription)",
}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``kata-events`` parser with one subparser per subcommand.

    Start-up time is paid by every shipper that starts the command: only the module of subcommand
    ``only`` is imported and given its arguments (``""``: none, for --version and --help); the
    others get their summary alone. ``None`` builds them all.
    """
    parser = _Parser(
        prog="kata-events",
        description="Stream KATA/KEDR Central Node Events API telemetry to stdout as NDJSON.",
    )
    parser.add_argument("--version", action="version", version=f"kata-events {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, summary in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=summary)
            continue
        module_name = "kata_events.emulator.cli" if name == "emulator" else f"kata_events.commands.{name}"
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=summary,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            # A command that adds its own --help (`state`: per action) says so.
            add_help=not getattr(module, "OWN_HELP", False),
        )
        module.add_arguments(command)
        command.logs_usage_error = getattr(module, "LOGS_USAGE_ERROR", False)
        command.set_defaults(handler=module.run, parser=command)
    return parser


def _fatal_line(argv: Sequence[str], message: str, code: ExitStatus, reason: str, **fields: str) -> int:
    """Log a failure found before a command runs (or ``run``'s usage error) as one ``fatal`` line: JSON
    unless --log-format, KATA_EVENTS_LOG_FORMAT or the config file asks for text; its exit code.

    A shipper that starts a mistyped command logs this line with all the others of the run.
    """
    from kata_events import logs
    from kata_events.config import requested_log_format

    given = next(
        (v for f, v in zip(argv, argv[1:]) if f == "--log-format"),
        next((a.split("=", 1)[1] for a in argv if a.startswith("--log-format=")), None),
    )
    logs.setup_logging("info", requested_log_format(argparse.Namespace(log_format=given), os.environ))
    logs.emit("fatal", message, exit_code=int(code), reason=reason, **fields)
    return int(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``kata-events`` with ``argv`` (default: the process arguments); return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    # The first word that is not an option: the top-level options (--help, --version) take no value.
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    if command and command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1, cutoff=0.6)
        guess = f"did you mean {close[0]}? " if close else ""
        message = f"unknown command {command!r}: {guess}the commands are {', '.join(COMMANDS)}"
        usage = build_parser("").format_usage().strip()
        message += "; see `kata-events --help`"
        return _fatal_line(argv, message, ExitStatus.USAGE, "usage", usage=usage)
    # The state file's lock (flock), the pipe's fill level (FIONREAD) and the terminal check of stdin
    # are POSIX calls: on Windows the first import of fcntl or termios would end in a traceback. So
    # checked before any subcommand's module is imported; --version and --help still work.
    missing = []
    for name in ("fcntl", "termios") if command else ():
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        unsupported = (
            f"this Python ({sys.platform}) has no {' or '.join(missing)}: kata-events runs on Linux "
            "(and other POSIX systems); run it on the collector's Linux host, or in WSL on Windows"
        )
        return _fatal_line(argv, unsupported, ExitStatus.UNAVAILABLE, "platform")
    parser = build_parser(command)
    # Unknown arguments are reported by the subcommand that got them, with its usage and a guess,
    # rather than by the top-level parser, which knows none of the subcommand's options.
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub, message = args.parser, f"unrecognized arguments: {' '.join(extra)}"
        flag = next((word.split("=", 1)[0] for word in extra if word.startswith("-")), None)
        if flag is not None:
            known = [s for action in sub._actions for s in action.option_strings]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            message += (
                f": did you mean {close[0]}?" if close else f": see `{sub.prog} --help` for the known options"
            )
        sub.error(message)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"kata-events: {exc}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 0


def console_main() -> None:
    """The console script: `main`, then exit without the interpreter's teardown.

    Tearing down the imported modules takes ~100 ms, most of rsyslog's 200 ms closeTimeout after
    STOP. Everything that matters is done by then: commits are fsynced, logs are flushed below.
    """
    code = main()
    for stream in filter(None, (sys.stdout, sys.stderr)):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
