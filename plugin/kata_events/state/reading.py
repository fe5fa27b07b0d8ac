"""Reading the state file and its companion progress record: parsed, checked, never written.

A file that does not parse was edited by hand and is reported (`StateCorrupt`), never silently
dropped; the original script's plain ``continuation_token.txt`` (the token alone) is read as a
token. This module never logs and never writes a file.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from kata_events.state.errors import StateCorrupt, StateNotWritable
from kata_events.state.files import FIX_HINT, StateFiles, is_link_error
from kata_events.state.progress import RecordError, check_point_fields, decode_record

STATE_VERSION = 1
# A plain token file larger than this is not a token file.
_MAX_STATE_BYTES = 1 << 20
#: How the state file dates its record (``saved_at``): UTC, to the second.
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(epoch: Optional[float] = None) -> str:
    """``epoch`` (default: now) as a ``saved_at`` stamp, ``2026-11-27T21:30:00Z``."""
    return time.strftime(STAMP_FORMAT, time.gmtime(epoch))


def parse_stamp(text: str) -> Optional[float]:
    """A ``saved_at`` stamp as seconds since the epoch; None when it is not one."""
    try:
        return float(calendar.timegm(time.strptime(text, STAMP_FORMAT)))
    except (TypeError, ValueError):
        return None


def _read(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        return f.read(limit)


@dataclass
class Subscription:
    """What the state file records. A plain imported token file has empty url/id/filter/saved_at."""

    token: Optional[str]
    url: str
    external_system_id: str
    filter: str
    saved_at: str  # ISO-8601 UTC, e.g. 2026-11-27T21:30:00Z
    #: The ``progress`` object as stored (None when absent), and why it is unusable (else "").
    progress: Optional[Dict[str, Any]] = None
    progress_problem: str = ""


def read_state(files: StateFiles) -> Tuple[Optional[Subscription], str]:
    """What the state file holds (None when absent or empty), and which kind: ``json``, ``plain``
    (the original script's token file), ``empty`` or ``missing``."""
    path = files.path
    try:
        data = _read(path, _MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None, "missing"
    except IsADirectoryError:
        raise StateNotWritable(f"state file {path} is a directory: {FIX_HINT}") from None
    except OSError as exc:
        if is_link_error(exc, path):
            raise files.link_refused(path) from None
        raise StateNotWritable(
            f"cannot read state file {path}: {exc.strerror or exc}; fix its ownership and "
            "permissions (it should belong to the user kata-events runs as, mode 0600)"
        ) from None
    if len(data) > _MAX_STATE_BYTES:
        raise files.corrupt("is larger than 1 MiB, so it is not a token file")
    if data.lstrip()[:1] not in (b"{", b"["):
        try:
            token = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise StateCorrupt(f"token file {path} is not UTF-8 text") from None
        if not token:
            return None, "empty"
        if len(token.split()) > 1:
            raise StateCorrupt(
                f"token file {path} holds more than one word, so it is neither a state file nor the "
                f"original script's token file: move it away (e.g. mv {path} {path}.bad) or fix it"
            )
        return Subscription(token, "", "", "", ""), "plain"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise files.corrupt(f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise files.corrupt("is not a JSON object")
    version = doc.get("version")
    if version != STATE_VERSION:
        raise files.corrupt(f"has version {version!r}; this kata-events understands version {STATE_VERSION}")
    token = doc.get("token")
    if token is not None and (not isinstance(token, str) or not token):
        raise files.corrupt("has a 'token' that is not a non-empty string")
    fields = {key: doc.get(key, "") for key in ("url", "external_system_id", "filter", "saved_at")}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise files.corrupt(f"has a {key!r} that is not a string")
    progress = doc.get("progress")
    problem = ""
    if progress is not None:
        try:
            if not isinstance(progress, dict):
                raise RecordError("it is not a JSON object")
            check_point_fields(progress)
        except RecordError as exc:
            # Only the position inside a page is lost: the token itself still holds.
            problem = str(exc)
            progress = None
    return Subscription(token=token, **fields, progress=progress, progress_problem=problem), "json"


def read_companion(path: Path, fallback: str = "") -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """The companion progress record's fields (None when absent, never written or unusable), and
    why it is unusable: ``fallback`` says what resuming does instead."""
    try:
        data = _read(path, _MAX_STATE_BYTES)
        if not data.strip():
            return None, []  # created, never written: a kill -9 at the very first record
        fields = decode_record(data)
        if "token" not in fields:
            raise RecordError("it has no token")
        return fields, []
    except FileNotFoundError:
        return None, []
    except (OSError, RecordError) as exc:
        why = f"cannot be read: {exc.strerror or exc}" if isinstance(exc, OSError) else exc
        return None, [f"progress record {path} is corrupt ({why}): {fallback}"]
