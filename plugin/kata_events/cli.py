"""Command line entry point: parses arguments, wires the pieces, turns failures into exit codes.

Each subcommand lives in its own module; this one only dispatches. It never writes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Optional, Sequence

from kata_events import __version__
from kata_events.exits import ExitStatus, UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE) as the exit-code table says, not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitStatus.USAGE), f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``kata-events`` parser with one subparser per subcommand."""
    parser = _Parser(
        prog="kata-events",
        description="Stream KATA/KEDR Central Node Events API telemetry to stdout as NDJSON.",
    )
    parser.add_argument("--version", action="version", version=f"kata-events {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from kata_events import check_command, demo, init_command, run_command
    from kata_events.emulator import cli as emulator_cli

    run = sub.add_parser(
        "run",
        help="stream events to stdout (the main job)",
        description=run_command.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_command.add_arguments(run)
    run.set_defaults(handler=run_command.run)

    emulator = sub.add_parser(
        "emulator",
        help="run a local Central Node Events API emulator",
        description=emulator_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emulator_cli.add_arguments(emulator)
    emulator.set_defaults(handler=emulator_cli.run)

    demo_parser = sub.add_parser(
        "demo",
        help="try it: the emulator and the emitter together, printing events",
        description=demo.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=demo.run)

    init = sub.add_parser(
        "init",
        help="make an external system id, key, certificate and config file",
        description=init_command.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init_command.add_arguments(init)
    init.set_defaults(handler=init_command.run)

    check = sub.add_parser(
        "check",
        help="check a set-up: configuration, files, network, TLS, approval, filter, state file",
        description=check_command.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check_command.add_arguments(check)
    check.set_defaults(handler=check_command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``kata-events`` with ``argv`` (default: the process arguments); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
