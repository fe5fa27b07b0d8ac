"""One event's JSON: the checks the splitter applies to the bytes of events, and their rewrites.

What each event is checked for: it is valid JSON (msgspec's grammar: strings, escapes, numbers,
literals, separators, matched brackets; not the UTF-8 validity of string contents, which would cost
more than the split itself) and an object. An event holding JSON whitespace other than spaces (a
pretty-printed body) is compacted onto one line (by the splitter, ``msgspec.json.format``), tokens
kept byte for byte; one holding raw control bytes inside strings (not strict JSON, but seen in the
field) or a lone UTF-16 surrogate escape is accepted by ``json.loads(strict=False)`` and, if it
holds control bytes, re-encoded as compact JSON with the same keys, order and values. All other
events are the server's bytes.

Pure functions over bytes (no state, no I/O); how the splitter cuts a body into windows is in
`kata_events.source.stream`.
"""

from __future__ import annotations

import json
import re
from typing import List, NoReturn, Optional

import msgspec

_LBRACE, _LBRACKET, _RBRACKET = b"{[]"

WHITESPACE = re.compile(rb"[ \t\n\r]*").match
_CONTROL = re.compile(rb"[\x00-\x1f]").search
_ERROR_BYTE = re.compile(r"\(byte (\d+)\)$")

_EVENTS = msgspec.json.Decoder(List[msgspec.Raw])
#: Validates one event (raises ``msgspec.DecodeError``, ``RecursionError``) without building it.
decode_one = msgspec.json.Decoder(msgspec.Raw).decode


def reject_constant(name: str) -> NoReturn:
    """For ``json.loads``'s ``parse_constant``: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def reencode_event(raw: bytes) -> bytes:
    """``raw`` (one JSON object msgspec refused) as it is if it holds no raw control byte (a lone
    surrogate escape), else as compact one-line JSON, keys, values and non-ASCII kept. Raises
    ``ValueError`` if ``raw`` is not JSON, ``RecursionError`` if it is nested too deep."""
    obj = json.loads(raw, strict=False, parse_constant=reject_constant)
    if _CONTROL(raw) is None:
        return raw
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (\\ud800 in the server's text) cannot be UTF-8: keep it \\u-escaped.
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_byte(exc: Exception) -> Optional[int]:
    """The offset msgspec names in a decode error, or None for truncated input."""
    match = _ERROR_BYTE.search(str(exc))
    return int(match.group(1)) if match else None


def last_cut(buf: bytearray, lo: int, hi: int) -> int:
    """Index of the ``}`` of the last ``},`` + whitespace + ``{`` starting in ``buf[lo:hi]``, or -1."""
    while True:
        at = buf.rfind(b"},", lo, hi)
        if at < 0:
            return -1
        nxt = WHITESPACE(buf, at + 2).end()
        if nxt < len(buf) and buf[nxt] == _LBRACE:
            return at
        hi = at + 1


def split_window(buf: bytearray, pos: int, cut: int) -> List[bytes]:
    """The elements of ``buf[pos:cut+1]`` read as the inside of a JSON array (msgspec validates them).

    Decoded in place, without copying the window: the bytes either side (the separator or ``[``
    before, the ``,`` after) become ``[`` and ``]`` for the call, and are put back.
    """
    before, after = buf[pos - 1], buf[cut + 1]
    buf[pos - 1], buf[cut + 1] = _LBRACKET, _RBRACKET
    try:
        with memoryview(buf) as view, view[pos - 1 : cut + 2] as window:
            raws = _EVENTS.decode(window)
            try:
                return list(map(bytes, raws))
            finally:
                del raws  # they point into the buffer: it cannot be resized while they live
    finally:
        buf[pos - 1], buf[cut + 1] = before, after
