"""Split an Events API response body, as it streams in, into the raw bytes of each event.

The Central Node answers ``{"events":[{...},{...}],"continuationToken":"..."}`` (keys in any order,
unknown keys possible, any JSON whitespace), up to ~140 MB per page. ``PageSplitter`` takes the body
in chunks of any size and hands back each element of ``events`` as the server's own bytes, one NDJSON
line each, without building Python objects per event. It owns only bytes and counters: it never
touches sockets, files or stdout, and never logs.

How: at each chunk the unsplit bytes (the window) start at an event; the last ``},{`` is a candidate
cut, and ``[`` + window-up-to-the-cut + ``]`` is decoded by msgspec (C) as ``list[msgspec.Raw]``,
which validates without building objects. Success proves the cut lies between two top-level events
(a cut inside a string or a nested value fails to decode); on failure an earlier candidate is tried.
When that does not settle the window (one event larger than the chunk, a raw control byte, a fault),
a resumable scanner (strings and bracket depth only) finds where the next value ends, and that event
is validated alone. The envelope around the array is walked by a small state machine; its values are
parsed with ``json`` at ``close()``.

Each event is checked to be valid JSON (msgspec's grammar: strings, escapes, numbers, literals,
separators, matched brackets; not the UTF-8 validity of string contents, which would cost more than
the split itself) and an object. One holding JSON whitespace other than spaces (a pretty-printed
body) is compacted onto one line (``msgspec.json.format``), tokens kept byte for byte; one holding
raw control bytes inside strings (not strict JSON, but seen in the field) or a lone UTF-16 surrogate
escape is accepted by ``json.loads(strict=False)`` and, if it holds control bytes, re-encoded as
compact JSON with the same keys, order and values. All other events are the server's bytes.

Memory is bounded by the chunk and the largest event accepted: an event larger than
``max_event_bytes``, or nested deeper than the decoder's recursion limit, is skipped (recorded in
``skipped``): one broken event must not wedge the stream, the page's token can still be committed.
A top-level value other than ``events`` larger than the cap makes the body malformed. Whitespace is
consumed as it comes, so a body of endless whitespace holds nothing.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import Any, Dict, List, NoReturn, Optional

import msgspec

from kata_events.options import MAX_EVENT_BYTES_DEFAULT

EXCERPT_CHARS = 200
#: Candidate cuts tried per window before the scanner takes the next event.
_TRIES = 4

_QUOTE, _LBRACE, _RBRACE, _LBRACKET, _RBRACKET, _COMMA, _COLON = b'"{}[],:'

_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*").match
# Inside a string: up to its closing quote, or up to a backslash that ends the buffer. Each loop's
# body starts with a byte its predecessor cannot consume, so backtracking stays linear.
_STRING_REST = rb'[^"\\]*(?:\\.[^"\\]*)*'
_IN_STRING = re.compile(_STRING_REST, re.S).match
# Inside a container, outside strings: plain bytes and whole strings, up to a bracket, the opening
# quote of a string cut by the end of the buffer, or the end.
_OUTSIDE = re.compile(rb'[^"{}\[\]]*(?:"' + _STRING_REST + rb'"[^"{}\[\]]*)*', re.S).match
_FIRST = operator.itemgetter(0)
_OBJECT = {_LBRACE}
# Parser states: before the top-level "{"; after "{" (a key or "}"); after "," (a key); before ":";
# before a value; after a top-level value ("," or "}"); after "[" (an event or "]"); after "," in the
# array (an event); after an event ("," or "]"); after the closing "}" (whitespace only).
_S_BEGIN, _S_KEY_OR_END, _S_KEY, _S_COLON, _S_VALUE = range(5)
_S_COMMA_OR_END, _S_ELEM_OR_END, _S_ELEM, _S_AFTER_ELEM, _S_DONE = range(5, 10)

# The states where one punctuation byte is expected: the state each one leads to, and the problem
# when another byte stands there.
_PUNCTUATION = {
    _S_BEGIN: ({_LBRACE: _S_KEY_OR_END}, "body is not a JSON object"),
    _S_COLON: ({_COLON: _S_VALUE}, "expected ':' after a top-level key"),
    _S_AFTER_ELEM: ({_COMMA: _S_ELEM, _RBRACKET: _S_COMMA_OR_END}, "expected ',' or ']' after an event"),
    _S_COMMA_OR_END: ({_COMMA: _S_KEY, _RBRACE: _S_DONE}, "expected ',' or '}' in the top-level object"),
}

# What the scanner is capturing.
_FOR_EVENT, _FOR_KEY, _FOR_VALUE = 0, 1, 2

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


class MalformedBody(ValueError):
    """The body is not a complete JSON object of the expected shape (``reason``), at byte ``offset``
    of the body (None: its end); ``excerpt`` is a printable excerpt (at most 200 characters) there."""

    def __init__(self, message: str, excerpt: str = "", offset: Optional[int] = None) -> None:
        where = "end of body" if offset is None else f"byte {offset}"
        super().__init__(f"{message} (at {where}: {excerpt!r})" if excerpt else f"{message} (at {where})")
        self.reason, self.excerpt, self.offset = message, excerpt, offset


@dataclass(frozen=True)
class SkippedEvent:
    """An element of ``events`` that was not handed back: its index in the array, body offset, size."""

    index: int
    offset: int
    size: int
    reason: str


def _printable(data: bytes) -> str:
    text = bytes(data).decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)[:EXCERPT_CHARS]


class PageSplitter:
    """Incremental splitter for one Events API response body. Not thread-safe; one per response."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES_DEFAULT) -> None:
        self.max_event_bytes = max_event_bytes
        self.event_count = 0
        self.bytes_fed = 0
        #: Events not handed back (too large, too deep), in order; the caller reports and clears it.
        self.skipped: List[SkippedEvent] = []
        self._buf = bytearray()  # unconsumed bytes of the body
        self._off = 0  # body offset of _buf[0]
        self._pos = 0  # where parsing stands in _buf (the start of a value being scanned)
        self._state = _S_BEGIN
        self._error: Optional[MalformedBody] = None
        self._values: Dict[str, Optional[bytes]] = {}  # top-level key -> raw value (None for events)
        self._key = ""
        self._seen_events = False
        self._index = 0  # elements of the events array seen so far
        self._tail = b""  # the last bytes fed, for the excerpt of a truncated body
        # The scanner: what it captures (None: nothing), where it stands, and its state there.
        self._purpose: Optional[int] = None
        self._scalar = False
        self._scan_pos = 0
        self._depth = 0
        self._in_string = False
        self._skip_from = -1  # body offset of the oversized event being skipped
        self._bulk_from = 0  # body offset before which the bulk path is not tried again

    def feed(self, chunk: bytes) -> List[bytes]:
        """Consume the next chunk; return the events it completed, in order: each one JSON object,
        surrounding whitespace removed, with no byte below 0x20. Raises ``MalformedBody`` as soon as
        the bytes cannot be a valid envelope; after that every call raises it again."""
        if self._error is not None:
            raise self._error
        out: List[bytes] = []
        if not chunk:
            return out
        self.bytes_fed += len(chunk)
        self._tail = (self._tail + chunk)[-120:] if len(chunk) < 120 else bytes(chunk[-120:])
        self._buf += chunk
        try:
            self._run(out)
        except MalformedBody as exc:
            self._error = exc
            raise
        finally:
            self.event_count += len(out)
            drop = self._pos - 1  # one byte is kept before the next event: `split_window` uses it
            if drop > 0:
                del self._buf[:drop]
                self._off += drop
                self._scan_pos -= drop
                self._pos = 1
        return out

    def close(self) -> Dict[str, Any]:
        """End of body: return the envelope with ``events`` replaced by ``[]``.

        Raises ``MalformedBody`` if the body is truncated, has no ``events`` key, or a top-level value
        other than ``events`` is not valid JSON.
        """
        if self._error is not None:
            raise self._error
        if self._state != _S_DONE:
            self._fail_at_end("body is truncated" if self.bytes_fed else "body is empty")
        if not self._seen_events:
            self._fail_at_end('envelope has no "events" key')
        envelope: Dict[str, Any] = {}
        for key, raw in self._values.items():
            try:
                envelope[key] = [] if raw is None else json.loads(raw, parse_constant=reject_constant)
            except (ValueError, RecursionError) as exc:
                message = f"top-level value of {key!r} is not JSON ({exc})"
                self._error = MalformedBody(message, _printable(raw))
                raise self._error from None
        return envelope

    def _fail(self, message: str, at: int) -> NoReturn:
        """Raise for a problem at ``_buf[at]``."""
        raise MalformedBody(message, _printable(self._buf[max(0, at - 60) : at + 60]), self._off + at)

    def _fail_at_end(self, message: str) -> NoReturn:
        self._error = MalformedBody(message, _printable(self._tail[-60:]), None)
        raise self._error

    def _run(self, out: List[bytes]) -> None:
        buf = self._buf
        n = len(buf)
        while True:
            if self._purpose is not None:
                end = self._scan(buf, n)
                if end < 0:
                    self._hold_or_skip(n)
                    return
                self._finish(end, out)
                continue
            pos = self._pos = WHITESPACE(buf, self._pos).end()
            if pos >= n:
                return
            state = self._state
            c = buf[pos]
            if state in (_S_ELEM, _S_ELEM_OR_END):
                if c == _LBRACE:
                    if self._off + pos < self._bulk_from or not self._bulk(buf, pos, n, out):
                        self._begin(_FOR_EVENT, pos)
                elif c == _RBRACKET and state == _S_ELEM_OR_END:
                    self._state = _S_COMMA_OR_END
                    self._pos += 1
                elif c == _RBRACKET:
                    self._fail("trailing comma in the events array", pos)
                else:
                    self._fail("an element of events is not an object", pos)
            elif state in _PUNCTUATION:
                following, problem = _PUNCTUATION[state]
                if c not in following:
                    self._fail(problem, pos)
                self._state = following[c]
                self._pos += 1
            elif state in (_S_KEY_OR_END, _S_KEY):
                if c == _QUOTE:
                    self._begin(_FOR_KEY, pos)
                elif c == _RBRACE and state == _S_KEY_OR_END:
                    self._state = _S_DONE
                    self._pos += 1
                else:
                    self._fail("expected a key in the top-level object", pos)
            elif state == _S_VALUE:
                if self._key == "events":
                    if c != _LBRACKET:
                        self._fail('"events" is not an array', pos)
                    self._state = _S_ELEM_OR_END
                    self._pos += 1
                elif c in b'{["-0123456789tfn':
                    self._begin(_FOR_VALUE, pos)
                else:
                    self._fail("expected a JSON value", pos)
            else:  # _S_DONE
                self._fail("trailing data after the top-level object", pos)

    def _bulk(self, buf: bytearray, pos: int, n: int, out: List[bytes]) -> bool:
        """Split the events from ``pos`` (an event's ``{``) to the last cut msgspec accepts.

        Returns False, leaving the next event to the scanner, when no candidate settles the window;
        the bulk path then waits until the scanner is past the earliest candidate tried (or the
        fault msgspec found), so no byte is decoded in vain more than a few times.
        """
        if pos < 1:
            return False
        # The likeliest cut: the window's first event's first key, starting the next event too.
        key_end = buf.find(b":", pos, pos + 256)
        cut = buf.rfind(b"}," + bytes(buf[pos : key_end + 1]) if key_end > 0 else b"},{", pos, n)
        hi = n
        for _ in range(_TRIES):
            if cut < 0:
                cut = last_cut(buf, pos, hi)
                if cut < 0:
                    break
            hi = cut + 1  # the next candidate starts before this one
            try:
                events = split_window(buf, pos, cut)
            except msgspec.DecodeError as exc:
                at = error_byte(exc)
                if at is not None and at < cut - pos:  # a fault before the cut, not the cut itself
                    self._bulk_from = self._off + pos + at
                    return False
                cut = -1
                continue
            except RecursionError:
                break
            if set(map(_FIRST, events)) != _OBJECT:
                break  # the scanner names the element that is not an object
            end = cut + 1
            if end - pos > self.max_event_bytes or any(buf.find(ws, pos, end) >= 0 for ws in b"\n\r\t"):
                for event in events:
                    self._emit(event, pos, out)
            else:
                out.extend(events)
                self._index += len(events)
            self._state = _S_ELEM
            self._pos = WHITESPACE(buf, cut + 2).end()
            return True
        self._bulk_from = self._off + (hi if hi < n else n)
        return False

    def _emit(self, event: bytes, at: int, out: List[bytes]) -> None:
        """Hand back one event that msgspec accepted, compacted if it holds whitespace other than spaces."""
        if len(event) > self.max_event_bytes:
            self._skip(self._off + at, len(event), "larger than max_event_bytes")
            return
        self._index += 1
        if b"\n" in event or b"\r" in event or b"\t" in event:
            event = msgspec.json.format(event, indent=-1)  # on one line, every token kept
        out.append(event)

    def _skip(self, offset: int, size: int, reason: str) -> None:
        """The next element of ``events`` is not handed back."""
        self.skipped.append(SkippedEvent(self._index, offset, size, reason))
        self._index += 1

    # -- the scanner: where one value ends --------------------------------------------------------

    def _begin(self, purpose: int, pos: int) -> None:
        """Start scanning the value at ``pos``; strings are entered, containers and scalars not."""
        self._purpose = purpose
        self._scalar = self._buf[pos] not in b'{["'
        self._in_string = self._buf[pos] == _QUOTE
        self._scan_pos = pos + 1 if self._in_string else pos
        self._depth = 0

    def _scan(self, buf: bytearray, n: int) -> int:
        """Scan on; return the end of the value (exclusive), or -1 when ``buf`` ran out first."""
        pos = self._scan_pos
        if self._scalar:
            end = _SCALAR(buf, pos).end()
            self._scan_pos = end
            return end if end < n else -1
        depth = self._depth
        while True:
            if self._in_string:
                pos = _IN_STRING(buf, pos).end()
                if pos >= n or buf[pos] != _QUOTE:
                    break  # the end, or a backslash as the last byte: resume there
                pos += 1
                self._in_string = False
                if not depth:
                    return pos
                continue
            pos = _OUTSIDE(buf, pos).end()
            if pos >= n:
                break
            c = buf[pos]
            pos += 1
            if c == _QUOTE:
                self._in_string = True
            elif c in (_LBRACE, _LBRACKET):
                depth += 1
            else:
                depth -= 1
                if not depth:
                    return pos
        self._scan_pos = pos
        self._depth = depth
        return -1

    def _hold_or_skip(self, n: int) -> None:
        """The value under scan continues in the next chunk: keep it, or drop it if it is too large."""
        if self._skip_from >= 0:
            self._pos = self._scan_pos  # skipping: nothing of the event is kept
        elif n - self._pos > self.max_event_bytes:
            if self._purpose != _FOR_EVENT:
                self._fail(
                    f"a top-level value is larger than max_event_bytes ({self.max_event_bytes})", self._pos
                )
            self._skip_from = self._off + self._pos
            self._pos = self._scan_pos

    def _finish(self, end: int, out: List[bytes]) -> None:
        purpose, start = self._purpose, self._pos
        self._purpose = None
        self._pos = end
        if purpose == _FOR_EVENT:
            self._state = _S_AFTER_ELEM
            if self._skip_from >= 0:
                self._skip(self._skip_from, self._off + end - self._skip_from, "larger than max_event_bytes")
                self._skip_from = -1
            else:
                self._check_event(bytes(self._buf[start:end]), start, out)
        elif purpose == _FOR_KEY:
            try:
                key = json.loads(self._buf[start:end])
            except ValueError:
                self._fail("a top-level key is not a valid JSON string", start)
            if key == "events":
                if self._seen_events:
                    self._fail('duplicate "events" key', start)
                self._seen_events = True
                self._values[key] = None
            self._key = key
            self._state = _S_COLON
        else:
            self._values[self._key] = bytes(self._buf[start:end])  # last duplicate wins, as in json
            self._state = _S_COMMA_OR_END

    def _check_event(self, event: bytes, start: int, out: List[bytes]) -> None:
        """Validate one event the scanner delimited, and hand it back (compacted) or skip it."""
        try:
            if len(event) <= self.max_event_bytes:  # a larger one is skipped by `_emit`
                try:
                    decode_one(event)
                except msgspec.DecodeError as exc:
                    # Raw control bytes in strings and lone surrogate escapes are JSON to Python's decoder.
                    try:
                        out.append(reencode_event(event))
                    except ValueError:
                        at = error_byte(exc)
                        self._fail(f"an event is not valid JSON ({exc})", start + (at or len(event) - 1))
                    self._index += 1
                    return
        except RecursionError:
            self._skip(self._off + start, len(event), "nested too deep")
            return
        self._emit(event, start, out)
