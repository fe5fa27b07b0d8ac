"""`kata-events demo`: the emulator and the emitter together, printing events — the first thing to run.

It starts the built-in emulator on a free loopback port with throwaway certificates and automatic
approval, then runs exactly the `run` code path against it (the same options, client, delivery and
token store), so what the demo shows is what production does. Everything it makes lives in a
temporary directory removed at exit. Events go to stdout; the commentary goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import uuid
from pathlib import Path

from kata_events.config import load_run_config
from kata_events.exits import ExitStatus, UserError

DESCRIPTION = """\
Start a local Central Node emulator with throwaway certificates and automatic approval,
and stream its events to stdout exactly as `kata-events run` would. Ctrl-C stops it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, kind, default, metavar, text in (
        ("--events", int, 0, "N", "stop after N events (default: run until Ctrl-C)"),
        ("--backlog", int, 20, "N", "events waiting at start (default: 20)"),
        ("--rate", float, 2.0, "R", "new events per second (default: 2)"),
    ):
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="how the commentary on stderr is written (default: text)",
    )


def _as_emulator_event(record: logging.LogRecord) -> bool:
    """Names the built-in emulator's log records `emulator`, an event of the log catalogue."""
    record.event = "emulator"
    return True


def run(args: argparse.Namespace) -> int:
    from kata_events import certs  # cryptography: only this command needs it
    from kata_events.commands.run import run_config
    from kata_events.emulator.server import Emulator

    if args.events < 0:
        raise UserError("--events must be 0 (no limit) or more", ExitStatus.USAGE)
    # `not >= 0` also refuses nan; the emulator would otherwise end the demo with a traceback.
    if args.backlog < 0 or not 0 <= args.rate < float("inf"):
        raise UserError("--backlog and --rate must be 0 or more (and --rate finite)", ExitStatus.USAGE)
    logging.getLogger("kata_events.emulator").addFilter(_as_emulator_event)
    with tempfile.TemporaryDirectory(prefix="kata-events-demo-") as tmp:
        root = Path(tmp)
        client = certs.make_self_signed_cert("kata-events demo")
        client.write(root / "client.crt", root / "client.key")
        external_system_id = str(uuid.uuid4())
        with Emulator(
            listen="127.0.0.1:0",
            state_dir=root / "emulator",
            approve="auto",
            backlog=args.backlog,
            rate=args.rate,
        ) as emulator:
            # The demo talks to its own emulator on loopback: where that cannot work, retrying with
            # back-off (what `run` does for a real Central Node) would only hide it.
            try:
                socket.create_connection(("127.0.0.1", emulator.port), timeout=5).close()
            except OSError as exc:
                raise UserError(
                    f"demo: cannot reach its own emulator at {emulator.url} on loopback: {exc}: "
                    "the loopback interface (lo) is down or missing here (a network namespace or "
                    "container without it); bring it up (ip link set lo up) or run the demo where "
                    "127.0.0.1 works",
                    ExitStatus.UNAVAILABLE,
                ) from None
            sys.stderr.write(
                f"kata-events: demo: emulator at {emulator.url} (CA {emulator.ca_file}); external "
                f"system {external_system_id}; events follow on stdout, Ctrl-C stops\n"
            )
            # As flags would give them: strings, converted and checked with the configuration.
            run_args = argparse.Namespace(
                url=[emulator.url],
                external_system_id=external_system_id,
                cert=str(root / "client.crt"),
                key=str(root / "client.key"),
                ca_file=str(emulator.ca_file),
                state_file=str(root / "demo.token"),
                max_timeout="5",
                max_events="100",
                ack="none",
                log_format=args.log_format,
                stats_interval="0",
            )
            config = load_run_config(run_args, {k: v for k, v in os.environ.items() if k == "HOME"})
            code = run_config(config, stop_after=args.events or None)
    sys.stderr.flush()
    return code
