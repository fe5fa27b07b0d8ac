"""Split an Events API response body, as it streams in, into the raw bytes of each event.

The Central Node answers ``{"events":[{...},{...}],"continuationToken":"..."}`` (keys in any order,
unknown keys possible, any JSON whitespace), up to ~130 MB per page. ``PageSplitter`` takes the body in
chunks of any size and hands back each element of ``events`` as the server's own bytes, ready to be
written as one NDJSON line, without building Python objects per event. It owns only bytes and
counters: it never touches sockets, files or stdout.

What it checks, and what it does not:

* The envelope is checked fully: the top level is one object, ``events`` is an array whose elements
  are all objects, separators are where JSON puts them, nothing follows the closing brace, and the
  other top-level values are parsed with ``json`` at ``close()``.
* Inside an event only the structure is checked: brackets balance and match, strings are terminated.
  Tokens inside an event (numbers, literals, ``:`` and ``,`` placement, escape validity, UTF-8
  validity) are not, because that would need a full parse, which is what this module exists to avoid.
  A consumer parsing the line will see such a fault; the page boundaries stay right regardless.
* An event holding any byte below 0x20 (a raw newline used as whitespace in a pretty-printed body,
  or a raw control character inside a string, which strict JSON forbids) is re-encoded with
  ``json.loads(strict=False)`` / ``json.dumps(ensure_ascii=False, separators=(",", ":"))``: same keys,
  order and values, but one line. All other events are passed through byte for byte.

How it is fast in CPython (a regex over the event bytes is no faster than ``json.loads``): a whole
chunk is handled with a few C-level bytes passes, and Python runs a few steps per event, not per
byte. The window path rewrites the chunk at equal length (each escaped quote becomes two \\x01 bytes,
so every quote left delimits a string; each ``},{`` gets \\x02 for its comma), keeps only quotes,
brackets and marks with one ``bytes.translate``, drops the strings by quote parity (empty ones with
one ``replace``, the few holding brackets by ``split``), and splits what is left at the \\x02 marks
outside strings. Each piece between two marks is then settled by a dictionary of the bracket
sequences seen before (a page has a handful), and the event's bytes are sliced at the mark.
What it does not settle (separators with whitespace, control bytes, a ``},{`` inside a string, the
event cut by the end of the chunk) goes to the shape path: the same skeleton idea per event, with
shapes matched by ``startswith`` against a small cache and ends mapped back by counting ``}`` bytes.
Events that neither settles (cut by the end of the window, unusual shapes, control bytes) go
through an incremental scanner that resumes where it stopped, so a 10 MB event arriving in 256 KB
chunks is scanned once.

Memory: the splitter holds the current incomplete event (or top-level value) and the current chunk,
never the page.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["MalformedBody", "PageSplitter"]

EXCERPT_CHARS = 200

_QUOTE, _BACKSLASH = 0x22, 0x5C
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 0x7B, 0x7D, 0x5B, 0x5D
_COMMA, _COLON = 0x2C, 0x3A

# Python 3.11 added possessive quantifiers; they only save backtracking bookkeeping here. The plain
# patterns are written so that any backtracking is linear (each loop's body starts with a byte its
# predecessor cannot consume), so 3.9/3.10 are as correct, just slower.
_POSSESSIVE = sys.version_info >= (3, 11)


def _scanner_patterns(possessive: bool) -> Dict[str, re.Pattern[bytes]]:
    """The incremental scanner's patterns; ``possessive`` selects the 3.11+ spelling."""
    q = "*+" if possessive else "*"
    plain = r'[^"{}\[\]]' + q
    string_rest = r'[^"\\]' + q + r"(?:\\.[^\"\\]" + q + ")" + q
    return {
        # Inside a container, outside strings: skip plain bytes and whole strings, stop at a bracket,
        # at the opening quote of a string cut by the end of the buffer, or at the end.
        "outside": re.compile((plain + '(?:"' + string_rest + '"' + plain + ")" + q).encode(), re.S),
        # Inside a string: stop at its closing quote, or before a backslash that ends the buffer.
        "string_rest": re.compile(string_rest.encode(), re.S),
    }


_PATTERNS = _scanner_patterns(_POSSESSIVE)
_OUTSIDE = _PATTERNS["outside"].match
_STRING_REST = _PATTERNS["string_rest"].match
_WS = re.compile(rb"[ \t\n\r]*").match
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*").match
_HAS_CONTROL = re.compile(rb"[\x00-\x1f]").search

# Parser states (top level and the events array).
_S_BEGIN = 0  # before the top-level "{"
_S_KEY_OR_END = 1  # after "{": a key or "}"
_S_KEY = 2  # after ",": a key
_S_COLON = 3
_S_VALUE = 4
_S_COMMA_OR_END = 5  # after a top-level value: "," or "}"
_S_ELEM_OR_END = 6  # after "[": an event or "]"
_S_ELEM = 7  # after "," in the array: an event
_S_AFTER_ELEM = 8  # after an event: "," or "]"
_S_DONE = 9  # after the closing "}": whitespace only
_S_CAPTURE = 10  # inside a captured value (event, key, or other top-level value)
_S_FAILED = 11

# What a capture is for.
_FOR_EVENT, _FOR_KEY, _FOR_VALUE = 0, 1, 2
# How a capture ends.
_K_CONTAINER, _K_STRING, _K_SCALAR = 0, 1, 2

_SCALAR_START = frozenset(b"-0123456789tfn")

# Bulk path: bytes kept in an event's skeleton, and the shape cache's bounds.
_NOT_SKELETON = bytes(b for b in range(0x20, 0x100) if b not in b'"{}[]\\')
_BACKSLASH_RUN = re.compile(rb"\\{2,}").sub
_SKELETON_WS = re.compile(rb"[\t\n\r]*").match
_SEPARATOR = re.compile(rb"[ \t\n\r]*([,\]])[ \t\n\r]*").match
_MAX_SHAPES = 64
_MAX_SHAPE = 4096

# Window path: escaped quotes and "},{" separators become these control bytes before the skeleton is
# taken; a window holding either byte itself is cut before it (control bytes need re-encoding anyway).
_ESC_MARK, _SEP_MARK = b"\x01", b"\x02"
# The window skeleton keeps quotes, brackets and both marks; every other control byte becomes \x00.
_WINDOW_TABLE = bytes(b if b in (1, 2) or b >= 0x20 else 0 for b in range(256))
_NOT_WINDOW_SKELETON = bytes(b for b in range(0x20, 0x100) if b not in b'"{}[]')
_MAX_STATUSES = 4096
_MARK_AFTER_BACKSLASH = re.compile(rb"\x01(?<=\\\x01)").search


class MalformedBody(ValueError):
    """The body is not a complete JSON object of the expected shape.

    ``excerpt`` is a short printable excerpt (at most 200 characters) around the problem, ``offset``
    the byte offset in the body where it was found (``None`` when it is the end of the body).
    """

    def __init__(self, message: str, excerpt: str = "", offset: Optional[int] = None) -> None:
        where = "end of body" if offset is None else f"byte {offset}"
        super().__init__(f"{message} (at {where}: {excerpt!r})" if excerpt else f"{message} (at {where})")
        self.reason = message
        self.excerpt = excerpt
        self.offset = offset


def _printable(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)[:EXCERPT_CHARS]


def _excerpt(data: bytes, at: int) -> str:
    """About 60 bytes either side of ``at``, printable, at most EXCERPT_CHARS characters."""
    return _printable(data[max(0, at - 60) : at + 60])


def reencode_event(raw: bytes) -> bytes:
    """``raw`` (one JSON object) as compact one-line JSON, keys and values kept, non-ASCII kept.

    Raises ``ValueError`` if ``raw`` is not JSON.
    """
    obj = json.loads(raw, strict=False)
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (\\ud800 in the server's text) cannot be UTF-8: keep it \\u-escaped.
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class PageSplitter:
    """Incremental splitter for one Events API response body. Not thread-safe; one per response."""

    def __init__(self) -> None:
        self.event_count = 0
        self.bytes_fed = 0
        self._state = _S_BEGIN
        self._error: Optional[MalformedBody] = None
        self._values: Dict[str, Optional[bytes]] = {}  # top-level key -> raw value (None for events)
        self._key: Optional[str] = None
        self._seen_events = False
        self._tail = b""  # the last bytes fed, for the excerpt of a truncated body
        self._base = 0  # body offset of the current chunk
        # Capture of one value that may span chunks.
        self._pieces: List[bytes] = []
        self._cap_start = 0
        self._kind = _K_CONTAINER
        self._purpose = _FOR_EVENT
        self._stack: List[int] = []
        self._in_string = False
        self._escape = False
        # Window path: what a piece's skeleton (after the open brackets it continues) settles to.
        self._first: Dict[bytes, Optional[bytes]] = {}
        self._more: Dict[bytes, Optional[bytes]] = {}
        self._window_ok = True
        # Shape path: event skeleton shapes seen recently, with their count of "}" bytes.
        self._shapes: List[Tuple[bytes, int]] = []
        self._fast_ok = True

    # -- public -------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> List[bytes]:
        """Consume the next chunk; return the events it completed, in order.

        Each event is the raw bytes of one JSON object, surrounding whitespace removed, with no byte
        below 0x20 (see the module docstring for the re-encoding rule). Raises ``MalformedBody`` as
        soon as the bytes cannot be a valid envelope; after that every call raises it again.
        """
        if self._error is not None:
            raise self._error
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        out: List[bytes] = []
        if not chunk:
            return out
        self._base = self.bytes_fed
        self.bytes_fed += len(chunk)
        self._window_ok = True
        self._fast_ok = True
        try:
            self._run(chunk, out)
        except MalformedBody as exc:
            self._state = _S_FAILED
            self._error = exc
            raise
        finally:
            self._tail = (self._tail + chunk)[-120:] if len(chunk) < 120 else chunk[-120:]
            self.event_count += len(out)
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
            if raw is None:
                envelope[key] = []
                continue
            try:
                envelope[key] = json.loads(raw)
            except ValueError as exc:
                message = f"top-level value of {key!r} is not JSON ({exc})"
                self._error = MalformedBody(message, _printable(raw))
                raise self._error from None
        return envelope

    # -- machinery ----------------------------------------------------------------------------

    def _fail(self, message: str, buf: bytes, at: int) -> None:
        raise MalformedBody(message, _excerpt(buf, at), self._base + at)

    def _fail_at_end(self, message: str) -> None:
        self._state = _S_FAILED
        self._error = MalformedBody(message, _printable(self._tail[-60:]), None)
        raise self._error

    def _run(self, buf: bytes, out: List[bytes]) -> None:
        n = len(buf)
        pos = 0
        while pos < n:
            state = self._state
            if state == _S_CAPTURE:
                end = self._capture(buf, pos, n)
                if end < 0:
                    break
                if self._pieces:
                    self._pieces.append(buf[self._cap_start : end])
                    value = b"".join(self._pieces)
                    self._pieces = []
                else:
                    value = buf[self._cap_start : end]
                pos = end
                self._finish_capture(value, buf, end, out)
                continue
            if state in (_S_ELEM, _S_ELEM_OR_END):
                pos = self._fast_events(buf, pos, n, out)
                if pos >= n:
                    return
                state = self._state
            pos = _WS(buf, pos).end()
            if pos >= n:
                return
            c = buf[pos]
            if state in (_S_ELEM, _S_ELEM_OR_END):
                if c == _LBRACE:
                    self._begin(_K_CONTAINER, _FOR_EVENT, pos, c)
                    pos += 1
                elif c == _RBRACKET and state == _S_ELEM_OR_END:
                    self._state = _S_COMMA_OR_END
                    pos += 1
                elif c == _RBRACKET:
                    self._fail("trailing comma in the events array", buf, pos)
                else:
                    self._fail("an element of events is not an object", buf, pos)
            elif state == _S_AFTER_ELEM:
                if c == _COMMA:
                    self._state = _S_ELEM
                elif c == _RBRACKET:
                    self._state = _S_COMMA_OR_END
                else:
                    self._fail("expected ',' or ']' after an event", buf, pos)
                pos += 1
            elif state == _S_BEGIN:
                if c != _LBRACE:
                    self._fail("body is not a JSON object", buf, pos)
                self._state = _S_KEY_OR_END
                pos += 1
            elif state in (_S_KEY_OR_END, _S_KEY):
                if c == _QUOTE:
                    self._begin(_K_STRING, _FOR_KEY, pos, c)
                    pos += 1
                elif c == _RBRACE and state == _S_KEY_OR_END:
                    self._state = _S_DONE
                    pos += 1
                else:
                    self._fail("expected a key in the top-level object", buf, pos)
            elif state == _S_COLON:
                if c != _COLON:
                    self._fail("expected ':' after a top-level key", buf, pos)
                self._state = _S_VALUE
                pos += 1
            elif state == _S_VALUE:
                if self._key == "events":
                    if c != _LBRACKET:
                        self._fail('"events" is not an array', buf, pos)
                    self._state = _S_ELEM_OR_END
                    pos += 1
                elif c in (_LBRACE, _LBRACKET):
                    self._begin(_K_CONTAINER, _FOR_VALUE, pos, c)
                    pos += 1
                elif c == _QUOTE:
                    self._begin(_K_STRING, _FOR_VALUE, pos, c)
                    pos += 1
                elif c in _SCALAR_START:
                    self._begin(_K_SCALAR, _FOR_VALUE, pos, c)
                else:
                    self._fail("expected a JSON value", buf, pos)
            elif state == _S_COMMA_OR_END:
                if c == _COMMA:
                    self._state = _S_KEY
                elif c == _RBRACE:
                    self._state = _S_DONE
                else:
                    self._fail("expected ',' or '}' in the top-level object", buf, pos)
                pos += 1
            else:  # _S_DONE
                self._fail("trailing data after the top-level object", buf, pos)
        if self._state == _S_CAPTURE:
            self._pieces.append(buf[self._cap_start :])
            self._cap_start = 0  # the value continues at the start of the next chunk

    def _begin(self, kind: int, purpose: int, pos: int, first: int) -> None:
        """Start capturing a value whose first byte ``first`` is at ``pos``.

        The caller steps past an opening bracket or quote; a scalar's first byte is left to the scan.
        """
        self._state = _S_CAPTURE
        self._kind = kind
        self._purpose = purpose
        self._cap_start = pos
        self._pieces = []
        self._escape = False
        if kind == _K_CONTAINER:
            self._stack = [_RBRACE if first == _LBRACE else _RBRACKET]
            self._in_string = False
        else:
            self._stack = []
            self._in_string = kind == _K_STRING

    def _capture(self, buf: bytes, pos: int, n: int) -> int:
        """Scan on from ``pos``; return the end of the captured value, or -1 if ``buf`` ran out."""
        if self._kind == _K_SCALAR:
            end = _SCALAR(buf, pos).end()
            return end if end < n else -1
        stack = self._stack
        if self._escape:
            self._escape = False
            pos += 1  # the byte after a backslash that ended the previous chunk
        while True:
            if self._in_string:
                pos = _STRING_REST(buf, pos).end()
                if pos >= n:
                    return -1
                if buf[pos] == _QUOTE:
                    pos += 1
                    self._in_string = False
                    if not stack:
                        return pos
                    continue
                self._escape = True  # a backslash as the buffer's last byte
                return -1
            pos = _OUTSIDE(buf, pos).end()
            if pos >= n:
                return -1
            c = buf[pos]
            pos += 1
            if c == _QUOTE:
                self._in_string = True
            elif c == _LBRACE:
                stack.append(_RBRACE)
            elif c == _LBRACKET:
                stack.append(_RBRACKET)
            elif stack.pop() != c:
                self._fail("mismatched bracket", buf, pos - 1)
            elif not stack:
                return pos

    def _finish_capture(self, value: bytes, buf: bytes, end: int, out: List[bytes]) -> None:
        purpose = self._purpose
        if purpose == _FOR_EVENT:
            if _HAS_CONTROL(value) is not None:
                try:
                    value = reencode_event(value)
                except ValueError as exc:
                    self._fail(f"an event is not valid JSON ({exc})", buf, end - 1)
            out.append(value)
            self._state = _S_AFTER_ELEM
        elif purpose == _FOR_KEY:
            try:
                key = json.loads(value)
            except ValueError:
                self._fail("a top-level key is not a valid JSON string", buf, end - 1)
            if key == "events":
                if self._seen_events:
                    self._fail('duplicate "events" key', buf, end - 1)
                self._seen_events = True
                self._values[key] = None
            self._key = key
            self._state = _S_COLON
        else:
            self._values[self._key] = value  # type: ignore[index]  # last duplicate wins, as in json
            self._state = _S_COMMA_OR_END

    def _fast_events(self, buf: bytes, pos: int, n: int, out: List[bytes]) -> int:
        """Split whole events in bulk from ``pos`` (an element start); return where it stopped.

        The window path settles compact pages; what it leaves (separators with whitespace, control
        bytes, a "},{" inside a string) goes to the shape path, and what that leaves to the scanner.
        """
        if self._window_ok:
            pos, settled = self._window_events(buf, pos, n, out)
            if settled or pos >= n:
                return pos
        if self._fast_ok:
            pos = self._shape_events(buf, pos, n, out)
        return pos

    def _window_events(self, buf: bytes, pos: int, n: int, out: List[bytes]) -> Tuple[int, bool]:
        """Split the events of the window ``buf[pos:]`` that end at a "},{" separator.

        Returns where it stopped, and whether that is simply the window's last event (cut by the end
        of the chunk, or followed by something other than "},{"), which only the scanner can settle.
        Never raises: what it does not settle is left, unchanged, to the paths that report faults.
        """
        pos = _WS(buf, pos).end()
        if pos >= n or buf[pos] != _LBRACE:
            return pos, False
        window = buf[pos:] if pos else buf
        # Control bytes need re-encoding and would be mistaken for the marks: the window ends before
        # the first \x01 or \x02 (a quick memchr), and its skeleton before the first other one.
        cut = len(window)
        for mark in (_ESC_MARK, _SEP_MARK):
            at = window.find(mark, 0, cut)
            if at >= 0:
                cut = at
        if cut < len(window):
            window = window[:cut]
        # Same-length rewrites keep offsets aligned. Escaped quotes become two \x01 bytes, so every
        # quote left is a string delimiter; a quote after a run of 2+ backslashes needs the pairs
        # rewritten first (left to right, as JSON reads them), which is rare and costs a pass.
        marked = window
        if b'\\"' in marked:
            marked = marked.replace(b'\\"', _ESC_MARK * 2)
            # A backslash before a mark: that quote followed 2+ backslashes, so the run is paired
            # first, left to right as JSON does (rare; a search starting at a backslash is slow).
            if _MARK_AFTER_BACKSLASH(marked) is not None:
                marked = window.replace(b"\\\\", b"__").replace(b'\\"', _ESC_MARK * 2)
        marked = marked.replace(b"},{", b"}" + _SEP_MARK + b"{")
        # The skeleton: quotes, brackets and marks in order (\x00 for any other control byte).
        skeleton = marked.translate(_WINDOW_TABLE, _NOT_WINDOW_SKELETON)
        if b"\x00" in skeleton:
            skeleton = skeleton[: skeleton.index(b"\x00")]
            cut = -1  # something is left that the next paths must see
        # Drop the strings: adjacent quote pairs first (most strings keep nothing), then the rest by
        # parity. Every bracket and mark left is outside strings. A "},{" inside a string is a
        # separator mark that disappears: only the marks before it can be trusted.
        skeleton = skeleton.replace(b'""', b"")
        if b'"' in skeleton:
            parts = skeleton.split(b'"')
            end = len(parts)
            if _SEP_MARK in b"".join(parts[1::2]):
                end = next(i for i in range(1, end, 2) if _SEP_MARK in parts[i])
                cut = -1
            skeleton = b"".join(parts[0:end:2])
        pieces = skeleton.split(_SEP_MARK)
        marks = len(pieces) - 1  # the pieces before the last one end at a trusted separator
        if not marks:
            return pos, False
        first, more = self._first, self._more
        if len(first) + len(more) > _MAX_STATUSES:
            first.clear()
            more.clear()
        find = marked.find
        start = off = 0  # where the current event and the current piece start in the window
        closers = b""  # what the current event still needs closed after its earlier pieces
        settled = cut == len(window)
        for piece in pieces:
            if closers:
                key = closers + _SEP_MARK + piece
                try:
                    status = more[key]
                except KeyError:
                    status = more[key] = _piece_status(piece, closers)
            else:
                try:
                    status = first[piece]
                except KeyError:
                    status = first[piece] = _piece_status(piece, b"")
            if status is None:
                settled = False
                break  # not a plain compact event: the next paths settle it
            off = find(_SEP_MARK, off)  # just after the "}" that ends this piece
            if status:
                closers = status
            else:
                out.append(window[start:off])
                start = off + 1
                closers = b""
            off += 1
            marks -= 1
            if not marks:
                break  # the last piece has no separator after it
        if start:
            self._state = _S_ELEM
        if not settled and start < len(window) // 4:
            self._window_ok = False  # little gained here: no more window attempts in this chunk
        return pos + start, settled

    def _shape_events(self, buf: bytes, pos: int, n: int, out: List[bytes]) -> int:
        """Split whole events in bulk from ``pos`` (an element start); return where it stopped.

        It stops, leaving the state machine and the incremental scanner to take over, at an event cut
        by the end of the chunk, at anything unusual (an event holding control bytes or a shape it
        cannot settle), and at the end of the array. It never raises: faults are reported by the
        scanner, which re-reads the same bytes.
        """
        if not self._fast_ok:
            return pos
        pos = _WS(buf, pos).end()
        if pos >= n or buf[pos] != _LBRACE:
            return pos
        window = buf[pos:] if pos else buf
        # Make every quote left a string delimiter: drop escaped backslashes (left to right, as JSON
        # reads them), and the quote of each escaped quote. Offsets change; only the order of what
        # remains matters below. Each is a full substring search, so skip them when no quote follows
        # a backslash. The backslash of an escaped quote stays, so that one outside any string
        # (invalid JSON) shows in the skeleton and hands the event to the scanner.
        unescaped = window.replace(b"\\\\", b"").replace(b'\\"', b"\\") if b'\\"' in window else window
        # The skeleton: quotes, brackets, backslashes and control bytes, in order. Backslash runs are
        # collapsed (only "is there one" matters), and adjacent quote pairs (strings with nothing
        # kept inside) dropped: that keeps the quote parity before every other byte, so each bracket
        # is still known to be inside or outside a string.
        skeleton = unescaped.translate(None, _NOT_SKELETON)
        if b"\\\\" in skeleton:
            skeleton = _BACKSLASH_RUN(b"\\\\", skeleton)
        skeleton = skeleton.replace(b'""', b"")
        shapes = self._shapes
        find = window.find
        spos = wpos = 0
        slen = len(skeleton)
        while True:
            known = None
            for entry in shapes:
                if skeleton.startswith(entry[0], spos):
                    known = entry
                    break
            if known is None:
                found = _event_shape(skeleton, spos)
                if found is None:
                    break  # cut by the end of the window, or unusual: the scanner decides
                known = (found, found.count(b"}"))
                if len(shapes) >= _MAX_SHAPES:
                    shapes.pop()
                shapes.insert(0, known)
            shape, closers = known
            end = wpos
            for _ in range(closers):
                end = find(b"}", end) + 1
            out.append(window[wpos:end])
            spos += len(shape)
            sep = _SEPARATOR(window, end)
            if sep is None:
                wpos = end
                self._state = _S_AFTER_ELEM  # the scanner reports what follows
                break
            wpos = sep.end()
            if sep.group(1) == b"]":
                self._state = _S_COMMA_OR_END
                break
            self._state = _S_ELEM
            spos = _SKELETON_WS(skeleton, spos).end()
            if wpos >= len(window) or spos >= slen or window[wpos] != _LBRACE:
                break
        if wpos < len(window) // 4 and wpos + pos < n:
            self._fast_ok = False  # little gained here: no more bulk attempts in this chunk
        return pos + wpos


def _piece_status(piece: bytes, closers: bytes) -> Optional[bytes]:
    """What one piece of a window skeleton settles to, after an event's earlier pieces left ``closers``.

    A piece holds the brackets outside strings between two "},{" separators (or the window start), and
    \\x01 for an escaped quote outside any string. ``b""``: the event ends with the piece's last byte;
    non-empty: the closers still needed (innermost last); ``None``: not a plain event (a separator with
    whitespace, mismatched brackets, a backslash outside strings, implausibly deep): the other paths
    settle or report it.
    """
    if not closers and (not piece or piece[0] != _LBRACE):
        return None
    if len(piece) + len(closers) > _MAX_SHAPE:
        return None
    stack = list(closers)
    last = len(piece) - 1
    for i, c in enumerate(piece):
        if c == _LBRACE:
            stack.append(_RBRACE)
        elif c == _LBRACKET:
            stack.append(_RBRACKET)
        elif not stack or stack.pop() != c or (not stack and i != last):
            return None
    return bytes(stack)


def _event_shape(skeleton: bytes, start: int) -> Optional[bytes]:
    """The skeleton of the event starting at ``start``, if it is complete and ordinary.

    ``None`` when the skeleton ends first, an event holds a control byte (it needs re-encoding), the
    brackets do not match or a backslash stands outside a string (the scanner reports or settles
    it), or the shape is implausibly long.
    """
    if start >= len(skeleton) or skeleton[start] != _LBRACE:
        return None
    stack: List[int] = []
    in_string = False
    for i in range(start, min(len(skeleton), start + _MAX_SHAPE)):
        c = skeleton[i]
        if c == _QUOTE:
            in_string = not in_string
        elif c < 0x20:
            return None
        elif in_string:
            continue  # a bracket or backslash inside a string
        elif c == _LBRACE:
            stack.append(_RBRACE)
        elif c == _LBRACKET:
            stack.append(_RBRACKET)
        elif c == _BACKSLASH or stack.pop() != c:
            return None
        elif not stack:
            return skeleton[start : i + 1]
    return None
