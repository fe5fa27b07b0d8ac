"""Structured logs on stderr: every log line is a named event from one catalogue.

`kata_events.log_events.EVENTS` lists each thing the program can report, with its level, the fields
it may carry and what it means. `emit` is the only way to log one; it marks names and fields the
catalogue does not declare, so code, logs and docs agree.

Formats: JSON lines (python-json-logger) with ``time``, ``level``, ``event``, ``message`` and the
event's fields, non-ASCII kept as is; or ``text`` for people. This module never writes to stdout:
stdout carries events only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from enum import Enum
from pathlib import PurePath
from typing import Any, Dict, Optional, TextIO, Union

try:  # python-json-logger 3.x and later
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - python-json-logger 2.x
    from pythonjsonlogger.jsonlogger import JsonFormatter

from kata_events.log_events import EVENTS, OUTPUT_KEYS, RECORD_ATTRS, EventSpec, troubleshooting_table

__all__ = ["EVENTS", "EventSpec", "emit", "setup_logging", "troubleshooting_table"]

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
    ``undeclared`` note: a typo never ends a running pipeline. The tests hold every call in the
    package to the catalogue by reading the source (tests/test_logs.py), so the path is the same.
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
    extra = {key: _plain(value) for key, value in fields.items() if value is not None}
    extra["event"] = name
    logger.log(levelno, message, extra=extra, stacklevel=2)


# -- formatters -------------------------------------------------------------------------------------


def _fields_of(record: logging.LogRecord) -> Dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in RECORD_ATTRS and k != "event"}


def _utc(created: float, millis: bool) -> str:
    moment = datetime.fromtimestamp(created, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}Z" if millis else "Z")


class JsonLinesFormatter(JsonFormatter):
    """One JSON object per line: time, level, event, message, the fixed fields (``node``), then the
    event's fields."""

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
        for key in ("exc_info", "stack_info"):
            if message_dict.get(key):
                log_data[key] = message_dict[key]


class TextFormatter(logging.Formatter):
    """``2026-11-27T21:30:00Z WARNING unauthorized: <message> node=pcn key=value ...`` for people."""

    def __init__(self, fixed: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.fixed = [f"{key}={_text_value(value)}" for key, value in (fixed or {}).items()]

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _utc(record.created, millis=False),
            record.levelname,
            f"{getattr(record, 'event', 'log')}: {record.getMessage()}",
            *self.fixed,
        ]
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


def _is_stdout(stream: TextIO) -> bool:
    if stream is sys.stdout or stream is sys.__stdout__:
        return True
    try:
        return stream.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


def setup_logging(level: str, fmt: str, stream: Optional[TextIO] = None, node: Optional[str] = None) -> None:
    """Send the ``kata_events`` logger's lines to ``stream`` (default: the current sys.stderr).

    ``level`` is debug|info|warning|error, ``fmt`` json|text. ``node``, the run's name, is put on
    every line as the ``node`` field (set once here, so a line costs nothing more than a dict
    update). Calling it again replaces the previous set-up. Refuses stdout, which carries events
    only.
    """
    stream = stream or sys.stderr
    if _is_stdout(stream):
        raise ValueError("logs never go to stdout: stdout carries events only")
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {fmt!r}")
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
