"""Delivery points: how far into the answer to a continuation token the consumer has been served.

A `Point` says "the first ``events`` events of the answer to ``token`` are delivered, and
``digest`` is the SHA-256 of their bytes as written (each event line followed by its newline)".
``events == 0`` is the same claim as a committed token: every page before it is delivered. A restart
asks again with ``token`` and skips exactly those events when the first ``events`` of the new
answer hash to ``digest``; otherwise it delivers everything. ``token`` None is the first answer of a
new subscription (asked for without a token): a restart's new subscription is checked the same way.

This module is pure: points, the digest, and the companion record's bytes (with its own checksum,
since that record is not fsynced on every update). No I/O, no clock, no logging.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

#: A SHA-256 hasher (the digest of events is taken over their bytes as written).
new_hasher = hashlib.sha256
#: The digest of no events at all.
EMPTY_DIGEST = new_hasher().hexdigest()


def joined(lines: List[bytes]) -> bytes:
    """``lines`` as written on stdout: each one followed by a newline (one copy of the bytes)."""
    return b"\n".join(lines + [b""])


@dataclass(frozen=True)
class Point:
    """The first ``events`` events of the answer to ``token`` are delivered; ``digest`` is their hash."""

    token: Optional[str]
    events: int = 0
    digest: str = EMPTY_DIGEST

    @property
    def first_page(self) -> bool:
        """A point inside the first answer of a new subscription (asked for without a token): a
        restart's new subscription may answer with the same events, which its digest tells."""
        return self.token is None


class RecordError(ValueError):
    """A progress record that does not parse or whose checksum does not match."""


def _canonical(fields: Dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_record(point: Point, seq: int, identity: Dict[str, str]) -> bytes:
    """The companion record's bytes: one JSON object with a checksum over its other fields."""
    fields: Dict[str, Any] = {"version": 1, "seq": seq, **asdict(point), **identity}
    fields["check"] = hashlib.sha256(_canonical(fields)).hexdigest()[:32]
    return _canonical(fields) + b"\n"


def decode_record(data: bytes) -> Dict[str, Any]:
    """The fields of a companion record (``check`` removed); RecordError when it is not one."""
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"not a JSON record ({exc})") from None
    if not isinstance(fields, dict):
        raise RecordError("not a JSON object")
    if fields.pop("check", None) != hashlib.sha256(_canonical(fields)).hexdigest()[:32]:
        raise RecordError("its checksum does not match its content")
    if fields.get("version") != 1:
        raise RecordError(f"version {fields.get('version')!r} is not understood")
    check_point_fields(fields)
    return fields


def check_point_fields(fields: Dict[str, Any]) -> None:
    """RecordError unless ``seq``, ``events`` and ``digest`` (and ``token`` if present) are well formed."""
    for name in ("seq", "events"):
        value = fields.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RecordError(f"{name!r} is not a non-negative integer")
    digest = fields.get("digest")
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise RecordError("'digest' is not a SHA-256 in hex")
    token = fields.get("token", "x")
    if token is not None and (not isinstance(token, str) or not token):
        raise RecordError("'token' is not a non-empty string or null")
