"""`kata-events run`: load the configuration, open the state, and hand everything to the runner.

This module wires; it decides nothing about delivery or retries. Errors a user can cause
(configuration, files, state lock) become one message on stderr and a sysexits code, never a
traceback. It never writes to stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any, Dict, Optional

from kata_events import __version__, logs
from kata_events.commands.locate import RunFiles, token_store
from kata_events.config import Config, describe, load_run_config, requested_log_format, requested_name
from kata_events.delivery.acks import choose_ack_mode
from kata_events.delivery.policies import make_delivery
from kata_events.delivery.writer import LineWriter
from kata_events.exits import ExitStatus, UserError
from kata_events.fds import hold_closed_std_fds
from kata_events.key_password import exposures, pair_problem
from kata_events.options import add_run_arguments
from kata_events.runner import Runner
from kata_events.source.api import EventsClient
from kata_events.state.store import StateError
from kata_events.status_record import Health
from kata_events.stopping import Stop

DESCRIPTION = """\
Stream events from a Central Node's Events API to stdout, one JSON object per line.
Logs go to stderr. Every option is also a config file key and a KATA_EVENTS_<KEY>
environment variable; precedence: flag > environment > file > default.
"""


#: A usage error (an unknown flag, a missing value) is a ``fatal`` line, like every other error.
LOGS_USAGE_ERROR = True

#: The signals that stop a run cleanly (stop line, commit of what is delivered, exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


add_arguments = add_run_arguments


def run(args: argparse.Namespace) -> int:
    try:
        config = load_run_config(args, os.environ)
    except UserError as exc:
        # Logging is not set up either: in the format asked for wherever it could be read, JSON
        # otherwise, with the name or url given as the node, if any.
        logs.setup_logging(
            "info", requested_log_format(args, os.environ), node=requested_name(args, os.environ)
        )
        reason = "missing file" if exc.exit_code == ExitStatus.NO_INPUT else "configuration"
        problems = list(exc.problems) if len(exc.problems) > 1 else None
        logs.emit("fatal", str(exc), exit_code=int(exc.exit_code), reason=reason, problems=problems)
        return int(exc.exit_code)
    return run_config(config)


def run_config(config: Config, stop_after: Optional[int] = None) -> int:
    """Run the loop for an already resolved configuration (shared with ``demo``)."""
    logs.setup_logging(config.log_level, config.log_format, node=config.name)
    stop = Stop()
    client = EventsClient(config, stop=stop)
    logs.emit(
        "start",
        f"kata-events {__version__} starting",
        version=__version__,
        urls=list(config.url),
        external_system_id=config.external_system_id,
        state_file=str(config.state_file),
        max_events=config.max_events,
        max_timeout=config.max_timeout,
        filter=config.filter,
        once=config.once,
        verified_by=client.trust.text,
        proxies=client.shown_proxies() or None,
    )
    logs.emit("config", "effective configuration", **describe(config))
    if config.insecure:
        logs.emit(
            "insecure",
            "insecure = true: the Central Node's certificate is NOT verified; anyone on the path can "
            "read and alter the events. Use ca_file or pin_sha256 instead",
        )
    unusable = pair_problem(config.cert, config.key, client.key_password)
    if unusable is not None:
        logs.emit("fatal", unusable, exit_code=int(ExitStatus.CONFIG), reason="client certificate")
        return int(ExitStatus.CONFIG)
    for path, exposed in exposures(config.key, client.key_password).items():
        logs.emit("key_permissions", exposed, key=path, fix=f"chmod 600 {path}")
    # Chosen before any file is opened: a closed stdin is still seen as closed.
    mode, why, already_read = choose_ack_mode(config.ack)
    hold_closed_std_fds()
    store = token_store(config)
    try:
        store.open()
        store.check_owner()
    except StateError as exc:
        store.close()
        logs.emit("fatal", str(exc), exit_code=int(exc.exit_code), reason="state file")
        return int(exc.exit_code)
    for warning in store.warnings:
        logs.emit("state", warning, level="WARNING", state_file=str(config.state_file))
    try:
        options: Dict[str, Any] = dict(settle=config.settle_time, stop=stop, settle_lines=config.settle_lines)
        if mode == "lines":
            options.update({name: getattr(config, name) for name in ("max_unacked", "ack_timeout")})
            options.update(already_read=already_read, started=config.ack == "auto")
        writer = LineWriter()
        writer.on_oversize = _oversize_warning
        fragment = writer.mend_torn_tail()
        if fragment:
            logs.emit(
                "torn_tail",
                f"stdout is a file that ended mid-line ({fragment} bytes after its last newline, "
                "left by a process killed while writing): that fragment is ended with a newline so "
                "no event is glued onto it; the whole event is sent again",
                bytes=fragment,
            )
        delivery = make_delivery(mode, writer, store.commit_point, store.note, **options)
        logs.emit("mode", f"ack mode {mode}: {why}; {delivery.guarantee}", mode=mode, reason=why)
        health = Health(RunFiles(config.state_file).status, config.max_timeout)
        store.on_commit = health.committed
        runner = Runner(
            health=health,
            client=client,
            store=store,
            delivery=delivery,
            once=config.once,
            lag_warning=config.lag_warning,
            stats_interval=config.stats_interval,
            warn_line_bytes=config.warn_line_bytes,
            stop_after=stop_after,
        )
        metrics = None
        if config.metrics_file is not None or config.metrics_listen:
            from kata_events.metrics import Metrics  # prometheus_client: only when metrics are asked for

            metrics = Metrics(
                runner.reports.snapshot,
                config.metrics_file,
                config.metrics_listen,
                interval=config.stats_interval or 60,
                on_error=lambda message: logs.emit("metrics_failed", message, level="WARNING"),
                labels={"node": config.name, "external_system_id": config.external_system_id},
            )
            try:
                metrics.start()
            except OSError as exc:
                logs.emit(
                    "fatal",
                    f"cannot serve metrics on {config.metrics_listen}: {exc.strerror or exc}; choose a free "
                    "port with metrics_listen (--metrics-listen), or leave it unset",
                    exit_code=int(ExitStatus.CONFIG),
                    reason="metrics_listen",
                )
                return int(ExitStatus.CONFIG)
        # The handler only records (`Stop.ask`). SIGHUP is a stop like the others (a closed terminal,
        # supervisors that stop with it): its default action would kill the process with no stop
        # line and exit 129.
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, frame: stop.ask(signal.Signals(signum).name))
        try:
            return runner.run()
        finally:
            # Stops are ignored while the process ends: the outcome and exit code are settled by now,
            # and shippers commonly stop their child twice (rsyslog's improg writes STOP then sends
            # SIGTERM): a SIGTERM landing in the last milliseconds would otherwise kill the process
            # with the default action and turn a clean exit into "killed by signal 15".
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            if metrics:
                metrics.close()
    finally:
        store.close()


def _oversize_warning(length: int, capacity: int) -> None:
    logs.emit(
        "line_over_pipe",
        f"an event of {length} bytes is larger than stdout's pipe can ever hold ({capacity} bytes): "
        "it is written in parts, so a kill of kata-events in the middle of it would leave part of "
        "it in the pipe (said once); raise /proc/sys/fs/pipe-max-size to make room",
        bytes=length,
        pipe_bytes=capacity,
    )
