"""The stdin acknowledgement protocol (rsyslog improg ``confirmMessages="on"``): parsing and mode choice.

Bytes from the shipper: ``START\\n`` once, then ``ACK\\n`` per line taken (pipelined), ``ACK <n>\\n``
for n lines at once (an extension for custom consumers), ``STOP\\n`` before it closes the pipes.
`AckParser` is pure: bytes in, protocol events out. `choose_ack_mode` looks at stdin once at start
and decides between ``none`` and ``lines`` for ``--ack auto`` without ever hanging on a stdin that
will never speak (a TTY, /dev/null, a pipe at EOF, a write-only or closed descriptor, a silent pipe).
Nothing here writes to stdout.
"""

from __future__ import annotations

import errno
import os
import select
import time
from dataclasses import dataclass
from typing import List, Tuple

from kata_events.fds import fd_kind

#: How long ``--ack auto`` listens on a silent stdin pipe for ``START`` before choosing ``none``.
START_GRACE = 0.5
#: The longest protocol line kept; anything longer is junk (and is not buffered without bound).
MAX_LINE = 128


@dataclass(frozen=True)
class AckEvent:
    """One protocol line: kind is ``start``, ``ack`` (with ``count``), ``stop`` or ``junk``."""

    kind: str
    count: int = 0
    text: str = ""


class AckParser:
    """Splits stdin bytes into protocol lines; pure, so property tests can drive it."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> List[AckEvent]:
        """Parse a chunk; return the complete lines it finished, in order."""
        buf = self._partial + data
        lines = buf.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            # No legitimate line is this long: report it once and keep only a bounded tail.
            lines.append(self._partial[:MAX_LINE])
            self._partial = b""
        return [parse_line(line) for line in lines if line.strip()]

    def close(self) -> List[AckEvent]:
        """End of input: a last line without newline still counts."""
        rest, self._partial = self._partial, b""
        return [parse_line(rest)] if rest.strip() else []


def parse_line(line: bytes) -> AckEvent:
    """One line (without newline) as a protocol event."""
    text = line.strip().decode("ascii", "replace")
    upper = text.upper()
    if upper == "ACK":
        return AckEvent("ack", 1)
    if upper.startswith("ACK ") or upper.startswith("ACK\t"):
        arg = text[4:].strip()
        if arg.isdigit() and int(arg) > 0:
            return AckEvent("ack", int(arg))
        return AckEvent("junk", text=text)
    if upper == "START":
        return AckEvent("start")
    if upper == "STOP":
        return AckEvent("stop")
    return AckEvent("junk", text=text)


def choose_ack_mode(requested: str, fd: int = 0, grace: float = START_GRACE) -> Tuple[str, str, bytes]:
    """Resolve ``--ack``: returns (mode, why, bytes already read from stdin after ``START``).

    ``none`` and ``lines`` are taken as asked. ``auto`` decides by looking at ``fd``: only a pipe
    or socket whose first line is ``START`` means ack mode; everything else means none, at once
    where the answer is known (TTY, character device, closed or write-only descriptor, EOF).
    """
    if requested == "none":
        return "none", "ack = none was asked for", b""
    if requested == "lines":
        return "lines", "ack = lines was asked for", b""
    kind = fd_kind(fd)
    if kind not in ("pipe", "socket"):
        what = {
            None: "closed",
            "tty": "a terminal",
            "chardev": "a character device such as /dev/null",
        }.get(kind, "not a pipe")
        return "none", f"stdin is {what}", b""
    received = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    start = time.monotonic()
    while b"\n" not in received and len(received) < MAX_LINE:
        deadline_left = grace - (time.monotonic() - start)
        if deadline_left <= 0:
            return "none", f"stdin said nothing within {grace:g} s", received
        if not poller.poll(deadline_left * 1000):
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            return "none", f"stdin cannot be read ({os.strerror(exc.errno or 0)})", b""
        if not chunk:
            if received.strip():
                break
            return "none", "stdin is at end of file", b""
        received += chunk
    first, _, rest = received.partition(b"\n")
    if first.strip().upper() == b"START":
        return "lines", "the shipper said START on stdin", rest
    return "none", f"stdin's first line is not START ({first[:40]!r})", b""
