"""``kata-events emulator``: options, start-up message, and running until SIGINT/SIGTERM.

Never writes to stdout: the banner and the logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, List

from kata_events.emulator.faults import FAULT_KINDS, Fault, FaultSpecError
from kata_events.emulator.server import MAX_TIMEOUT_LIMIT, Emulator

__all__ = ["DESCRIPTION", "add_arguments", "run"]

EXIT_OK = 0
EXIT_USAGE = 64
EXIT_CONFIG = 78

_FAULT_LINES = "\n".join(f"  {kind:<16} {what}" for kind, what in FAULT_KINDS.items())

DESCRIPTION = f"""\
Run a local stand-in for a Central Node's Events API: HTTPS with mutual TLS on loopback, the approval
flow for external systems, subscriptions with continuation tokens, long polling, filters, realistic
events and injectable faults. For trying a pipeline without a real Central Node, and for tests.

Events API:  GET /kata/events_api/v1/<external-system-uuid>/events
  max_events          1..--max-events-limit (default 1000 when absent)
  max_timeout         ISO-8601 duration, more than PT0S and at most PT{MAX_TIMEOUT_LIMIT:g}S
                      (default: --default-max-timeout)
  filter              bound to the subscription on the first request, ignored with a token
  continuation_token  from the previous response; an old token of a live subscription replays
                      from its position; an unknown or expired one gets 404 Subscription not found

Any client certificate is accepted at the TLS level (self-signed ones too); the events API answers
401 until the pair (external system id, certificate SHA-256) is approved. Every event carries
"EmulatorSeq" (a global sequence number starting at 1) as its first key.

Control endpoints (same address, no client certificate needed):
  POST /emulator/approve?external_system_id=ID[&fingerprint=SHA256]
                      approve one certificate, or every pending one of the id
  POST /emulator/revoke?external_system_id=ID[&fingerprint=SHA256]
  POST /emulator/faults      JSON body: a fault object, a spec string, or a list of them,
                             e.g. {{"kind": "503", "count": 3}} or ["drop@2", "429:retry_after=2"]
  POST /emulator/events?count=N[&age=SECONDS]
                             append N events, stamped now or SECONDS ago (a backlog to lag on;
                             stamps never go back, so start with --backlog 0 --rate 0 for old ones)
  GET  /emulator/status      pending and approved pairs, subscriptions, sequence numbers, faults

Fault spec (--fault, repeatable; faults queue up in order and hit events-API requests only):
  KIND[xCOUNT][@AFTER][:key=value,...]   keys: count, after, retry_after, delay, shift
  e.g. 503   503x3   drop@10   429:retry_after=2   slow:delay=5,count=2
  (AFTER: let that many requests through first, once the fault is at the head of the queue)
{_FAULT_LINES}

Filter language: FIELD (==|!=|contains) VALUE joined with and/or/not and parentheses; dotted paths
reach into nested objects and lists (Ioa.Rules.Techniques contains 'T1059'); strings in single quotes
with '' for a quote inside; backslashes are literal; numbers unquoted; keywords case-insensitive; a
missing field compares unequal.

Example:
  kata-events emulator --listen 127.0.0.1:8443 --approve manual --fault 503x2
"""


#: The flags that are the emulator's settings of the same name.
SETTINGS = (
    "listen",
    "state_dir",
    "approve",
    "backlog",
    "rate",
    "event_bytes",
    "retention",
    "max_events_limit",
    "default_max_timeout",
    "seed",
)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _fault(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``."""
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where the CA, the server certificate and the approvals are kept, made if missing "
        "(mode 0700, files 0600) (default: $XDG_STATE_HOME/kata-events/emulator, else "
        "~/.local/state/kata-events/emulator, beside run's tokens)",
    )
    parser.add_argument(
        "--approve",
        choices=("auto", "manual"),
        default="manual",
        help="manual: new (external system id, certificate) pairs get 401 until approved through "
        "the control endpoint, like a real Central Node; auto: approve every pair on first sight "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--backlog",
        type=_non_negative_int,
        default=1000,
        metavar="N",
        help="events present at start (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=5.0,
        metavar="EVENTS_PER_SECOND",
        help="steady stream of new events; 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--event-bytes",
        type=_non_negative_int,
        default=1500,
        metavar="BYTES",
        help="approximate size of one encoded event (default: %(default)s)",
    )
    parser.add_argument(
        "--retention",
        type=_positive_float,
        default=7200.0,
        metavar="SECONDS",
        help="events older than this are dropped and subscriptions idle for longer expire "
        "(default: %(default)s, two hours like a Central Node)",
    )
    parser.add_argument(
        "--max-events-limit",
        type=int,
        default=72000,
        metavar="N",
        help="largest max_events accepted; larger gets 400 (default: %(default)s)",
    )
    parser.add_argument(
        "--default-max-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help=f"long-poll wait when a request has no max_timeout, at most {MAX_TIMEOUT_LIMIT:g} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the event templates; the same seed gives the same events (default: %(default)s)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="SPEC",
        help="queue a fault at start, repeatable; see the fault spec above (default: none)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level of the messages on stderr (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT or SIGTERM; return the exit code."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("kata_events").setLevel(args.log_level.upper())

    if args.default_max_timeout > MAX_TIMEOUT_LIMIT:
        print(
            f"kata-events emulator: --default-max-timeout must be at most {MAX_TIMEOUT_LIMIT:g}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.max_events_limit < 1:
        print("kata-events emulator: --max-events-limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        emulator = Emulator(faults=args.fault, **{name: getattr(args, name) for name in SETTINGS})
    except ValueError as exc:
        print(f"kata-events emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous: List[Any] = [
        signal.signal(signal.SIGINT, on_signal),
        signal.signal(signal.SIGTERM, on_signal),
    ]
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"kata-events emulator: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(_banner(emulator), file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    return EXIT_OK


def _banner(emulator: Emulator) -> str:
    example_id = "00000000-0000-4000-8000-000000000001"
    lines = [
        "kata-events emulator is running",
        f"  URL:        {emulator.url}",
        f"  events:     {emulator.events_url('<external-system-uuid>')}",
        f"  CA file:    {emulator.ca_file}   (use it as --ca-file / curl --cacert)",
        f"  state dir:  {emulator.state_dir}",
        f"  approval:   {emulator.approve_mode}",
    ]
    if emulator.approve_mode == "manual":
        lines += [
            "  A new external system id + client certificate gets 401 until approved; the emulator",
            "  then prints the exact approval command. Or approve every pending certificate of an id:",
            f"    curl -X POST --cacert {emulator.ca_file} "
            f"'{emulator.url}/emulator/approve?external_system_id={example_id}'",
        ]
    lines += [
        "  Try it:",
        f"    curl --cert client.crt --key client.key --cacert {emulator.ca_file} "
        f"'{emulator.events_url(example_id)}?max_events=5'",
        "  Stop with Ctrl-C.",
    ]
    return "\n".join(lines)
