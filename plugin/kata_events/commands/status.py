"""`kata-events status`: how a run is doing, for Nagios/Icinga/Zabbix/systemd timers.

It reads local files only — the state file, its status record (`kata_events.status_record`) and
the pid in its lock file — never the network, and never takes the lock, so it is safe beside a
running ``run`` (even one starting at that moment). One line in the monitoring-plugins style goes
to stdout (``KATA-EVENTS OK - ... | lag=...``), or a JSON object with ``--format json``; the exit
code is the plugins' convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

Lag is how far behind the stream is: while the server still has more (the last answer was full),
the age of the newest event delivered; about zero once caught up while the run lives; for a run
that has stopped, the time since its last commit (the stream has moved on since). `evaluate` is
pure: the verdict from what the files say and the time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from kata_events.commands.locate import RunFiles, add_location_arguments, locate
from kata_events.exits import UserError
from kata_events.options import SERVER_RETENTION_SECONDS

DESCRIPTION = """\
Say how a run is doing, from local files only (the state file, the status record the run
keeps next to it, the pid in its lock file): never the network, safe beside a running run.
One line in the monitoring-plugins style on stdout, or JSON with --format json; the exit code
is theirs: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Give the run's --config or --state-file.
"""

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
#: 30 min: a third of the way to losing events (the Central Node keeps them for 2 hours).
WARNING_LAG = 1800
#: 90 of the 120 minutes.
CRITICAL_LAG = 5400
#: A subscription lost this recently is CRITICAL: events may have been skipped.
RECENT_LOSS = float(SERVER_RETENTION_SECONDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``status`` options: where the run's files are, the thresholds, the output format."""
    add_location_arguments(parser)
    parser.add_argument(
        "--warning-lag",
        type=float,
        default=WARNING_LAG,
        metavar="SECONDS",
        help=f"WARNING at this lag. Default: {WARNING_LAG}.",
    )
    parser.add_argument(
        "--critical-lag",
        type=float,
        default=CRITICAL_LAG,
        metavar="SECONDS",
        help=f"CRITICAL at this lag. Default: {CRITICAL_LAG} (90 of the 120 minutes the Central Node "
        "keeps events).",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="One monitoring-plugins line (text) or a JSON object (json). Default: text.",
    )


def stale_after(max_timeout: float) -> float:
    """A live run that has committed nothing for this long is stuck: every answer, even an empty
    one after a full long poll, is committed."""
    return 3 * max_timeout + 60


@dataclass
class Verdict:
    """What ``status`` reports."""

    status: str
    exit_code: int
    reason: str
    lag_seconds: Optional[float]
    last_commit: Optional[str]
    last_commit_age_seconds: Optional[float]
    running: bool
    pid: Optional[int]
    behind: bool
    state: str
    state_file: str


def _iso(epoch: Optional[float]) -> Optional[str]:
    if epoch is None:
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> Optional[float]:
    try:
        moment = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None
    return moment.replace(tzinfo=_dt.timezone.utc).timestamp()


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def evaluate(
    state_saved_at: Optional[str],
    state_exists: bool,
    record: Optional[Dict[str, Any]],
    running_pid: Optional[int],
    now: float,
    warning_lag: float = WARNING_LAG,
    critical_lag: float = CRITICAL_LAG,
    state_file: str = "",
) -> Verdict:
    """The verdict from the state file's ``saved_at``, the status record and the live pid."""
    record = record or {}
    running = running_pid is not None
    commits = [t for t in (record.get("last_commit"), parse_iso(state_saved_at or "")) if t]
    last_commit = max(commits) if commits else None
    commit_age = None if last_commit is None else max(0.0, now - last_commit)
    behind = bool(record.get("behind"))
    newest = record.get("newest_event")
    if behind and isinstance(newest, (int, float)):
        lag: Optional[float] = max(0.0, now - newest)
    elif running:
        lag = 0.0 if last_commit is not None else None
    else:
        lag = commit_age
    run_state = record.get("state", "unknown") if running else "stopped"

    def verdict(code: int, reason: str) -> Verdict:
        return Verdict(
            NAMES[code],
            code,
            reason,
            None if lag is None else round(lag, 1),
            _iso(last_commit),
            None if commit_age is None else round(commit_age, 1),
            running,
            running_pid,
            behind,
            run_state,
            state_file,
        )

    if not state_exists and not (running and record):
        return verdict(
            UNKNOWN,
            f"no state file at {state_file}: no run has committed there yet (or --config / "
            "--state-file point elsewhere)",
        )
    if running and record.get("state") == "refused":
        return verdict(CRITICAL, f"refused by the Central Node: {record.get('reason') or 'HTTP 401'}")
    lost_at = record.get("subscription_lost_at")
    if isinstance(lost_at, (int, float)) and now - lost_at < RECENT_LOSS:
        return verdict(
            CRITICAL,
            f"the subscription was lost {_ago(now - lost_at)} ago (a new one started): events may "
            "have been skipped",
        )
    if running:
        since = last_commit if last_commit is not None else record.get("started_at")
        limit = stale_after(float(record.get("max_timeout") or 60))
        if isinstance(since, (int, float)) and now - since > limit:
            what = record.get("reason") or record.get("state") or "no answer"
            return verdict(
                CRITICAL,
                f"running (pid {running_pid}) but nothing committed for {_ago(now - since)} "
                f"(long poll {record.get('max_timeout', '?')} s): {what}",
            )
    if lag is not None and lag >= critical_lag:
        return verdict(CRITICAL, f"{_ago(lag)} behind; the Central Node keeps events for 2 h")
    if lag is not None and lag >= warning_lag:
        return verdict(WARNING, f"{_ago(lag)} behind")
    if running and record.get("state") == "failing":
        return verdict(WARNING, f"requests are failing and retried: {record.get('reason', '')}")
    if running and record.get("state") in (None, "starting"):
        return verdict(OK, f"starting (pid {running_pid}), no answer from the Central Node yet")
    if running:
        where = f"{_ago(lag or 0)} behind" if behind else "caught up"
        return verdict(OK, f"streaming (pid {running_pid}), {where}")
    how = f" ({record['reason']})" if record.get("reason") else ""
    when = f", last commit {_ago(commit_age)} ago" if commit_age is not None else ""
    return verdict(OK, f"not running{how}{when}")


def running_pid(files: RunFiles) -> Optional[int]:
    """The pid a live run wrote in the lock file (it empties it when it stops), if that process
    lives. Never takes the lock: that could make a run starting right now exit 75."""
    try:
        text = files.lock.read_text(encoding="ascii", errors="replace").strip()
        pid = int(text) if text else None
    except (OSError, ValueError):
        return None
    if pid is None or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # killed (-9) with its pid still written
    except PermissionError:
        pass  # alive, another user's
    return pid


def text_line(v: Verdict, warning_lag: float, critical_lag: float) -> str:
    """``KATA-EVENTS OK - reason | lag=0s;1800;5400;0 last_commit_age=3s;;;0``"""
    perf = []
    if v.lag_seconds is not None:
        perf.append(f"lag={v.lag_seconds:g}s;{warning_lag:g};{critical_lag:g};0")
    if v.last_commit_age_seconds is not None:
        perf.append(f"last_commit_age={v.last_commit_age_seconds:g}s;;;0")
    tail = f" | {' '.join(perf)}" if perf else ""
    return f"KATA-EVENTS {v.status} - {v.reason}{tail}"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kata-events status``; returns 0..3."""
    from kata_events.state.store import StateError, TokenStore
    from kata_events.status_record import read_record

    now = time.time()
    try:
        files = locate(args, os.environ)
        sub = TokenStore(files.state, url="", external_system_id="").stored()
        record = read_record(files.status)
    except (UserError, StateError, OSError, ValueError) as exc:
        return _unknown(args, str(exc))
    verdict = evaluate(
        sub.saved_at if sub is not None else None,
        sub is not None,
        record,
        running_pid(files),
        now,
        args.warning_lag,
        args.critical_lag,
        str(files.state),
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(asdict(verdict), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(text_line(verdict, args.warning_lag, args.critical_lag) + "\n")
    return verdict.exit_code


def _unknown(args: argparse.Namespace, reason: str) -> int:
    if getattr(args, "format", "text") == "json":
        doc = {"status": "UNKNOWN", "exit_code": UNKNOWN, "reason": reason, "lag_seconds": None}
        doc.update(last_commit=None, running=None)  # not known: the files could not be read
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(f"KATA-EVENTS UNKNOWN - {reason}\n")
    return UNKNOWN
