"""`kata-events status`: how a run is doing, for Nagios/Icinga/Zabbix/systemd timers (see DESCRIPTION).

Its status record is `kata_events.status_record`'s. It never takes the lock: a run starting at that
moment would exit 75.

Lag is how far behind the stream is: while the server still has more (the last answer was full),
the age of the newest event delivered; about zero once caught up while the run lives; for a run
that has stopped, the time since its last commit (the stream has moved on since). `evaluate` is
pure: the verdict from what the files say and the time.

Several nodes (one run per Central Node) are each evaluated on their own, a node whose files cannot
be read being that node's UNKNOWN; `summarize` (pure too) makes their one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from kata_events import options as opts
from kata_events.commands.locate import RunFiles, add_location_arguments, locate
from kata_events.config import requested_name
from kata_events.exits import UserError
from kata_events.state.reading import parse_stamp, stamp

DESCRIPTION = """\
Say how a run is doing, from local files only (the state file, the status record the run
keeps next to it, the pid in its lock file): never the network, safe beside a running run.
One line in the monitoring-plugins style on stdout, or JSON with --format json; the exit code
is theirs: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Give the run's --config or --state-file.
Several nodes on one collector: --config once per node, or a directory of configurations
(/etc/kata-events holding <node>/config.toml); one line for all, the worst state's exit code.
"""

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
#: 30 min: a third of the way to losing events (the Central Node keeps them for 2 hours).
WARNING_LAG = 1800
#: 90 of the 120 minutes.
CRITICAL_LAG = 5400
#: A subscription lost this recently is CRITICAL: events may have been skipped.
RECENT_LOSS = float(opts.SERVER_RETENTION_SECONDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_arguments(parser, several=True)
    why = " (90 of the 120 minutes the Central Node keeps events)"
    for level, default, said in (("WARNING", WARNING_LAG, ""), ("CRITICAL", CRITICAL_LAG, why)):
        parser.add_argument(
            f"--{level.lower()}-lag",
            type=float,
            default=default,
            metavar="SECONDS",
            help=f"{level} at this lag. Default: {default}{said}.",
        )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="One monitoring-plugins line (text) or a JSON object (json; a list of them for "
        "several nodes). Default: text.",
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
    commits = [t for t in (record.get("last_commit"), parse_stamp(state_saved_at or "")) if t]
    last_commit = max(commits, default=None)
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
    known = dict(running=running, pid=running_pid, behind=behind, state=run_state, state_file=state_file)

    def verdict(code: int, reason: str) -> Verdict:
        lag_1, age_1 = (None if v is None else round(v, 1) for v in (lag, commit_age))
        commit = None if last_commit is None else stamp(last_commit)
        return Verdict(NAMES[code], code, reason, lag_1, commit, age_1, **known)

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
        pid = int(files.lock.read_text(encoding="ascii", errors="replace").strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # killed (-9) with its pid still written
    except PermissionError:
        pass  # alive, another user's
    return pid


def _perfdata(verdicts: Mapping[str, Mapping[str, Any]], warning_lag: float, critical_lag: float) -> str:
    """`` | lag=...`` for each verdict (a node's labels end in ``_<node>``), "" when none is known."""
    perf = []
    for suffix, verdict in verdicts.items():
        lag, age = verdict.get("lag_seconds"), verdict.get("last_commit_age_seconds")
        if lag is not None:
            perf.append(f"lag{suffix}={lag:g}s;{warning_lag:g};{critical_lag:g};0")
        if age is not None:
            perf.append(f"last_commit_age{suffix}={age:g}s;;;0")
    return f" | {' '.join(perf)}" if perf else ""


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kata-events status``; returns 0..3."""
    configs = args.config or ([os.environ[opts.CONFIG_ENV]] if os.environ.get(opts.CONFIG_ENV) else [])
    if len(configs) > 1 or (configs and os.path.isdir(configs[0])):
        return run_nodes(args, configs)
    args = argparse.Namespace(**{**vars(args), "config": configs[0] if configs else None})
    try:
        verdict = check_run(args, os.environ, time.time())
    except (UserError, OSError, ValueError) as exc:
        return _unknown(args, str(exc))
    # KATA-EVENTS OK - reason | lag=0s;1800;5400;0 last_commit_age=3s;;;0
    perf = _perfdata({"": asdict(verdict)}, args.warning_lag, args.critical_lag)
    _say(args, asdict(verdict), f"KATA-EVENTS {verdict.status} - {verdict.reason}{perf}")
    return verdict.exit_code


def _say(args: argparse.Namespace, as_json: Any, text: str) -> None:
    sys.stdout.write((json.dumps(as_json, ensure_ascii=False) if args.format == "json" else text) + "\n")


def check_run(args: argparse.Namespace, environ: Mapping[str, str], now: float) -> Verdict:
    """One run's verdict. Raises `UserError`, OSError or ValueError when its files cannot be found
    or read (the caller's UNKNOWN)."""
    from kata_events.state.store import TokenStore
    from kata_events.status_record import read_record

    files = locate(args, environ)
    sub = TokenStore(files.state, url="", external_system_id="").stored()  # a StateError is a UserError
    saved = (sub.saved_at, True) if sub is not None else (None, False)
    lags = (args.warning_lag, args.critical_lag)
    return evaluate(*saved, read_record(files.status), running_pid(files), now, *lags, str(files.state))


# -- several nodes ----------------------------------------------------------------------------------

#: How bad each state is when several are summed up: a CRITICAL node outweighs one nobody can read.
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}


def config_files(given: Sequence[str]) -> List[Tuple[Path, str]]:
    """The configuration files ``--config`` names, each with a problem ("" when none): a file as
    given; a directory as its ``<node>/config.toml`` files, then its ``*.toml`` files, sorted."""
    found: List[Tuple[Path, str]] = []
    for text in given:
        path = Path(os.path.abspath(os.path.expanduser(text)))
        if not path.is_dir():
            found.append((path, ""))
            continue
        inside = sorted(p for p in path.glob("*/config.toml") if p.is_file())
        inside += sorted(p for p in path.glob("*.toml") if p.is_file())
        if not inside:
            expected = f"{path}/<node>/config.toml (kata-events init --dir) or *.toml files"
            found.append((path, f"no configuration in the directory {path}: expected {expected}"))
        found += [(p, "") for p in inside]
    return found


def node_of(config_file: Path) -> str:
    """A node's name from its configuration file as ``run`` derives it, else the file's directory
    (``/etc/kata-events/scn1/config.toml`` → ``scn1``) or stem."""
    name = requested_name(argparse.Namespace(config=str(config_file)), {})
    if name is not None:
        return name
    stem = config_file.parent.name if config_file.name == "config.toml" else config_file.stem
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-._") or "node"


class NodeVerdict(NamedTuple):
    node: str
    config: str
    verdict: Dict[str, Any]


def unknown_verdict(reason: str) -> Dict[str, Any]:
    """The verdict of a run whose files could not be read: every key of a `Verdict`, those not
    known null, so a monitoring template finds the same keys whatever the status."""
    unknown = dict.fromkeys(field.name for field in fields(Verdict))
    return {**unknown, "status": NAMES[UNKNOWN], "exit_code": UNKNOWN, "reason": reason}


def run_nodes(args: argparse.Namespace, configs: Sequence[str]) -> int:
    """``status`` over several configurations: one line (or a JSON list), the worst exit code; a
    configuration that cannot be read is its node's UNKNOWN."""
    if args.state_file or args.external_system_id:
        return _unknown(
            args,
            "--state-file and --external-system-id name one run's files: with several "
            "configurations (or a directory), each configuration names its own",
        )
    now = time.time()
    # Each configuration speaks for its own node: a KATA_EVENTS_STATE_FILE (or _EXTERNAL_SYSTEM_ID)
    # meant for one run would otherwise point every node at the same files.
    own_env = {k: v for k, v in os.environ.items() if not k.startswith(opts.ENV_PREFIX)}
    results: List[NodeVerdict] = []
    seen: Dict[str, int] = {}
    for path, problem in config_files(configs):
        node = node_of(path)
        seen[node] = seen.get(node, 0) + 1
        if seen[node] > 1:  # two files naming one node: keep both apart in the line and perfdata
            node = f"{node}-{seen[node]}"
        one = argparse.Namespace(**{**vars(args), "config": str(path)})
        try:
            if problem:
                raise ValueError(problem)
            verdict = asdict(check_run(one, own_env, now))
        except (UserError, OSError, ValueError) as exc:
            verdict = unknown_verdict(str(exc))
        results.append(NodeVerdict(node, str(path), verdict))
    as_json = [{"node": r.node, "config": r.config, **r.verdict} for r in results]
    _say(args, as_json, summarize(results, args.warning_lag, args.critical_lag))
    return worst(results)


def worst(results: Sequence[NodeVerdict]) -> int:
    """The exit code of the worst node (OK < WARNING < UNKNOWN < CRITICAL); UNKNOWN for none."""
    return max((r.verdict["exit_code"] for r in results), key=SEVERITY.__getitem__, default=UNKNOWN)


def summarize(results: Sequence[NodeVerdict], warning_lag: float, critical_lag: float) -> str:
    """One monitoring-plugins line for several nodes: the worst state; each node with its state
    and reason, the worst first; perfdata per node (``lag_<node>``, ``last_commit_age_<node>``).

    ``KATA-EVENTS WARNING - 2 nodes: pcn WARNING 40 min behind; scn OK streaming (pid 7), caught
    up | lag_pcn=2400s;1800;5400;0 last_commit_age_pcn=3s;;;0 lag_scn=0s;1800;5400;0 ...``
    """
    code = worst(results)
    order = sorted(results, key=lambda r: -SEVERITY[r.verdict["exit_code"]])
    parts = [f"{r.node} {r.verdict['status']} {r.verdict['reason']}".replace("|", "/") for r in order]
    tail = _perfdata({f"_{r.node}": r.verdict for r in results}, warning_lag, critical_lag)
    count = f"{len(results)} node{'' if len(results) == 1 else 's'}"
    return f"KATA-EVENTS {NAMES[code]} - {count}: {'; '.join(parts)}{tail}"


def _unknown(args: argparse.Namespace, reason: str) -> int:
    _say(args, unknown_verdict(reason), f"KATA-EVENTS UNKNOWN - {reason}")
    return UNKNOWN
