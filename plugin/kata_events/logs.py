"""Structured logs on stderr: every log line is a named event from one catalogue, `EVENTS`.

The catalogue (`_TABLE`) lists each thing the program can report, with its level, the fields it
may carry and what it means; the troubleshooting table of docs/operations.md is generated from it
(`troubleshooting_table`). `emit` is the only way to log one; it marks names and fields the
catalogue does not declare, so code, logs and docs agree.

Formats: JSON lines (python-json-logger) with ``time``, ``level``, ``event``, ``message`` and the
event's fields, non-ASCII kept as is; or ``text`` for people. This module never writes to stdout:
stdout carries events only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import PurePath
from typing import Any, Dict, Iterator, Optional, TextIO, Tuple, Union

try:  # python-json-logger 3.x and later
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - python-json-logger 2.x
    from pythonjsonlogger.jsonlogger import JsonFormatter

from kata_events import options as opts

# Attributes every LogRecord has: neither an event field may take one of these names (logging
# refuses them in `extra`) nor may a formatter mistake one for a field.
RECORD_ATTRS = frozenset(
    (*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName")
)
#: Names the formatters put on every line; no event field may use them. ``node`` is there once a
#: run knows its name (`setup_logging`'s ``node``), so the lines of several runs can be told apart.
OUTPUT_KEYS = frozenset({"time", "level", "event", "message", "node"})


@dataclass(frozen=True)
class EventSpec:
    """One kind of log line: its name, default level, the fields it may carry, and its meaning."""

    name: str
    level: int
    fields: Tuple[str, ...]
    description: str

    def __post_init__(self) -> None:
        clash = set(self.fields) & (RECORD_ATTRS | OUTPUT_KEYS)
        if clash:
            raise ValueError(f"event {self.name}: field names {sorted(clash)} are reserved")


#: Fields standing for several: the options' names (the config line), the counters (stats, stop).
_SPREAD = {
    "*options": " ".join(o.name for o in opts.OPTIONS if o.name != "name"),
    "*stats": "events pages bytes retries skipped lag_seconds written acknowledged unacknowledged "
    "committed_pages committed_in_page uptime_seconds",
}

#: Each event: a line ``name LEVEL field ...``, then its meaning on the indented lines below.
_TABLE = """
start INFO version urls external_system_id state_file max_events max_timeout filter once verified_by proxies
    The process started; its version, main settings, what verifies the server (pin_sha256, ca_file,
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE or the system's trust store) and the proxy of each address that has
    one (without credentials).
config INFO *options config_file sources
    The effective configuration and where each value came from (flag, variable, file); the name is the
    line's `node`, as on every line of a run.
mode INFO mode reason
    The acknowledgement mode chosen (none or lines) and why, e.g. the shipper sent START.
insecure WARNING
    insecure = true: the Central Node's certificate is not verified. Use ca_file or pin_sha256.
state INFO state_file
    Something notable about the state file: created, imported from the old token file, reset.
subscription_new INFO filter
    No saved continuation token: the next request starts a new subscription.
subscription_lost ERROR url status reason
    The server no longer knows the token (404 Subscription not found): a new subscription starts and events
    may have been skipped. Usually the tool was stopped for over 2 hours.
filter_changed WARNING old_filter new_filter state_file
    The filter differs from the one the saved token belongs to: a new subscription starts.
page DEBUG events bytes seconds url lag_seconds
    One page of events was delivered (debug level: at info, steady streaming logs only the stats line and
    changes of state).
commit DEBUG pages position events token
    A continuation token was saved: everything before it is delivered (and the first `events` of the page
    after it).
resume INFO events token
    A restart skips the first events of the answer to the saved token: their digest matches what was
    delivered before.
resume_mismatch WARNING events token reason
    The answer to the saved token does not start with the events recorded as delivered (the server answered
    with other events, or fewer): nothing is skipped, all is delivered again.
progress_record WARNING state_file
    The record of progress inside a page is corrupt or unusable: resuming from the last commit; events
    delivered since are sent again.
settle INFO bytes lines settle_time settle_lines events token
    Stopping on a pipe: what the reader took in the last settle_time seconds, at most settle_lines lines,
    does not count as delivered (a shipper may drop what it reads while it shuts down); it is sent again.
reader_stalled INFO pid bytes lines
    Stopping with Fluent Bit reading stdout and no longer taking lines (its exec input drops what it reads
    once its engine has stopped, a second per line): the lines left in the pipe were read out so that Fluent
    Bit can stop at once; they are sent again at the next start. WARNING if the pipe could not be emptied.
caught_up INFO
    --once: a page shorter than max_events arrived, everything is committed; exiting.
retry WARNING attempt delay retry_after
    A request failed for a transient reason; retrying after a delay with backoff.
unauthorized ERROR url external_system_id fingerprint
    HTTP 401: an administrator must approve this external system (id and certificate fingerprint) in the
    Central Node web interface, External systems; if it is approved already, compare the id and fingerprint
    shown there with the ones logged. Retried every 5 s for 5 minutes, then every 30 s.
approved INFO
    The Central Node accepts this external system now.
bad_request ERROR reason filter
    HTTP 400: the server rejected a parameter, most often the filter. Fix it and restart.
bad_response WARNING excerpt delay
    The response could not be parsed; the page is not committed and is fetched again.
tls_verify_failed ERROR url server_fingerprint delay
    The Central Node's certificate is not trusted: set ca_file, or pin_sha256 to the fingerprint shown if it
    is really your server.
tls_files_changed WARNING reason
    The certificate, key or CA file changed but the new files cannot be used yet (the message says why, e.g.
    a key of another certificate in the middle of a renewal): connections keep the last good files and try
    the new ones again at the next connection. Finish the renewal.
key_permissions WARNING key fix
    The client's private key, or the file holding its passphrase, can be read by other accounts (group or
    others): whoever reads it can fetch this external system's events. Fix: chmod 600 on that file (said at
    start).
client_certificate ERROR
    The client certificate or key cannot be used (a key of another certificate, a certificate given as the
    key, an encrypted key without its passphrase or with a wrong one): the message names the files and the
    fix.
lag WARNING lag_seconds limit full_page
    The newest event delivered is older than lag_warning; past 2 hours events are lost. Raise max_events,
    filter more, or speed up the consumer.
lag_recovered INFO lag_seconds limit
    After a lag warning, the newest event delivered is younger than lag_warning again.
event_skipped ERROR index offset bytes reason limit url
    An event larger than max_event_bytes (or nested too deep to parse) was skipped, its bytes dropped as
    they arrived; the rest of the page is delivered. A broken server or proxy; raise max_event_bytes if such
    events are real.
line_too_long WARNING bytes limit
    An event line exceeds warn_line_bytes: raise the shipper's line limit (said once).
ack_timeout WARNING unacknowledged acknowledged seconds
    Lines have waited longer than ack_timeout for the shipper's acknowledgement; nothing is committed until
    they are acknowledged.
ack_protocol WARNING reason acknowledged written count
    Unexpected input on stdin in acknowledgement mode (ignored), stdin failed, or an acknowledgement of more
    lines than were written (a protocol error, logged at error level the first time: that acknowledgement is
    ignored, nothing counts as delivered by it).
drain_unmeasurable WARNING
    How much of stdout the reader has taken cannot be measured; a page counts as delivered once written.
torn_tail WARNING bytes
    stdout is a regular file that ended mid-line at start (a process killed while the kernel copied its
    write): the fragment is ended with a newline before any event is written, so no event is glued onto it;
    the whole event is sent again.
line_over_pipe WARNING bytes pipe_bytes
    An event is larger than stdout's pipe can ever hold: it is written in parts, so a kill in its middle
    would leave part of it in the pipe (said once per run).
consumer_gone WARNING
    The reader of stdout went away (broken pipe): stopping; nothing unflushed is committed.
disk_fault ERROR what paused_seconds
    The state file or a regular-file stdout stopped taking data mid-run (disk full, read-only, I/O error,
    quota): paused, the last saved token kept, retried until the disk works again (repeated as a warning
    while it lasts). Free space or fix the file system.
disk_recovered INFO what paused_seconds
    The disk takes data again after a disk_fault: the stream carries on by itself.
metrics_failed WARNING
    The metrics file cannot be written (said once until a write works again); the run goes on. Check
    metrics_file's directory.
stats INFO *stats
    Periodic counters: events and pages (complete pages delivered), bytes (received; in the stop line a page
    cut short included), retries, lag; written counts event lines written to stdout, acknowledged and
    unacknowledged (acknowledgement mode only) count lines too; committed_pages the tokens saved,
    committed_in_page the events of the page after the last one that the state records as delivered.
shipper_stop INFO reason
    Acknowledgement mode: the shipper said STOP, or closed stdin; the `stop` line follows once what it
    acknowledged is saved.
stop INFO reason exit_code *stats
    The process is stopping (signal, STOP from the shipper, --once done, error) and why; the final counters,
    as in stats.
fatal ERROR exit_code reason problems usage
    The process cannot go on (configuration, a missing file, a usage error, the state lock); the message
    says the fix, `problems` lists each of several.
emulator INFO
    kata-events demo only: what the built-in emulator did (approval, subscriptions, stop).
"""


def _parse(table: str) -> Iterator[EventSpec]:
    for head, text in re.findall(r"^(\S.*)\n((?:    .*\n)+)", table, re.MULTILINE):
        name, level, *fields = head.split()
        spread = tuple(f for field in fields for f in _SPREAD.get(field, field).split())
        yield EventSpec(name, logging.getLevelName(level), spread, " ".join(text.split()))


EVENTS: Dict[str, EventSpec] = {spec.name: spec for spec in _parse(_TABLE)}


def troubleshooting_table() -> str:
    """The table of log events in docs/operations.md: event, level, meaning."""
    lines = ["| Event | Level | Meaning |", "|---|---|---|"]
    for spec in EVENTS.values():
        meaning = spec.description.replace("|", "\\|")
        lines.append(f"| `{spec.name}` | {logging.getLevelName(spec.level).lower()} | {meaning} |")
    return "\n".join(lines) + "\n"


LOGGER_NAME = "kata_events"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def counted(count: int, noun: str) -> str:
    """``1 event``, ``2 events``: a count with its noun, for messages."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _plain(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def emit(name: str, message: str, *, level: Union[int, str, None] = None, **fields: Any) -> None:
    """Log event ``name`` with ``message`` and ``fields``, at the catalogue's level or ``level``.

    Fields whose value is None are left out. An unknown event or field is logged anyway, with an
    ``undeclared`` note: a typo never ends a running pipeline (tests/test_logs.py reads every call).
    """
    spec = EVENTS.get(name)
    undeclared = sorted(set(fields) - set(spec.fields)) if spec else []
    if spec is None or undeclared:
        fields = {k: v for k, v in fields.items() if k not in RECORD_ATTRS and k not in OUTPUT_KEYS}
        note = f"log event {name!r} does not declare fields {undeclared}"
        fields["undeclared"] = note if spec else f"unknown log event {name!r}"
    if level is None:
        level = spec.level if spec is not None else logging.WARNING
    levelno = LEVELS[level.lower()] if isinstance(level, str) else level
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.isEnabledFor(levelno):
        return
    extra = {key: _plain(value) for key, value in {**fields, "event": name}.items() if value is not None}
    logger.log(levelno, message, extra=extra, stacklevel=2)


# -- formatters -------------------------------------------------------------------------------------


def _fields_of(record: logging.LogRecord) -> Dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in RECORD_ATTRS and k != "event"}


def _utc(created: float, millis: bool) -> str:
    moment = datetime.fromtimestamp(created, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}Z" if millis else "Z")


class JsonLinesFormatter(JsonFormatter):
    """One JSON object a line: time, level, event, message, the fixed fields (``node``), the fields."""

    def __init__(self, fixed: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(json_ensure_ascii=False, reserved_attrs=sorted(RECORD_ATTRS))
        self.fixed = dict(fixed or {})

    # Positional parameters: their names changed between python-json-logger 2.x and 4.x.
    def add_fields(self, log_data, record, message_dict):  # type: ignore[no-untyped-def]
        log_data["time"] = _utc(record.created, millis=True)
        log_data["level"] = record.levelname.lower()
        log_data["event"] = getattr(record, "event", "log")
        log_data["message"] = record.getMessage()
        log_data.update(self.fixed)
        log_data.update(_fields_of(record))
        log_data.update({k: message_dict[k] for k in ("exc_info", "stack_info") if message_dict.get(k)})


class TextFormatter(logging.Formatter):
    """``2026-11-27T21:30:00Z WARNING unauthorized: <message> node=pcn key=value ...`` for people."""

    def __init__(self, fixed: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.fixed = [f"{key}={_text_value(value)}" for key, value in (fixed or {}).items()]

    def format(self, record: logging.LogRecord) -> str:
        event = f"{getattr(record, 'event', 'log')}: {record.getMessage()}"
        parts = [_utc(record.created, millis=False), record.levelname, event, *self.fixed]
        blocks = []
        for key, value in _fields_of(record).items():
            if isinstance(value, str) and "\n" in value:
                # A usage text, for instance: readable below the line rather than escaped in it.
                head = "" if value.startswith(f"{key}:") else f"{key}:\n"
                blocks.append(head + "  " + value.replace("\n", "\n  "))
                continue
            parts.append(f"{key}={_text_value(value)}")
        line = "\n".join([" ".join(parts), *blocks])
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    """A bare word as it is; anything else as JSON (a quoted string, true, 1.5, a list)."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str, stream: Optional[TextIO] = None, node: Optional[str] = None) -> None:
    """Send the ``kata_events`` logger's lines to ``stream`` (default: the current sys.stderr).

    ``level`` is debug|info|warning|error, ``fmt`` json|text; ``node``, the run's name, is on every
    line (set once here: a line costs one dict update more). A second call replaces the first.
    Refuses stdout, which carries events only.
    """
    stream = stream or sys.stderr
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if stream is sys.stdout or stream is sys.__stdout__ or fd == 1:
        raise ValueError("logs never go to stdout: stdout carries events only")
    handler = logging.StreamHandler(stream)
    fixed = {"node": node} if node else None
    handler.setFormatter(JsonLinesFormatter(fixed) if fmt == "json" else TextFormatter(fixed))
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if getattr(h, "_kata_events", False)]:
        logger.removeHandler(old)
    handler._kata_events = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level.lower()])
    # Our lines are complete on their own; a root handler would print them a second time.
    logger.propagate = False
