"""The acknowledgement protocol's pure parts: `AckParser` over any chunking; `choose_ack_mode` on real fds."""

from __future__ import annotations

import os
import pty
import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kata_events.delivery.acks import MAX_LINE, AckEvent, AckParser, choose_ack_mode, parse_line

# -- parse_line --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,event",
    [
        (b"ACK", AckEvent("ack", 1)),
        (b"ack", AckEvent("ack", 1)),
        (b"ACK\r", AckEvent("ack", 1)),
        (b"  ACK  ", AckEvent("ack", 1)),
        (b"ACK 5", AckEvent("ack", 5)),
        (b"ACK\t12", AckEvent("ack", 12)),
        (b"ACK 100000", AckEvent("ack", 100000)),
        (b"START", AckEvent("start")),
        (b"STOP", AckEvent("stop")),
        (b"stop\r", AckEvent("stop")),
    ],
)
def test_protocol_lines(line: bytes, event: AckEvent) -> None:
    assert parse_line(line) == event


@pytest.mark.parametrize(
    "line", [b"ACK 0", b"ACK -1", b"ACK x", b"ACK 1.5", b"ACKACK", b"OK", b"\xff\xfe", b"STARTED"]
)
def test_anything_else_is_junk(line: bytes) -> None:
    event = parse_line(line)
    assert event.kind == "junk"
    assert event.count == 0


# -- AckParser ---------------------------------------------------------------------------------------


def test_a_line_split_across_reads_is_one_line() -> None:
    parser = AckParser()
    assert parser.feed(b"AC") == []
    assert parser.feed(b"K\nACK 3") == [AckEvent("ack", 1)]
    assert parser.feed(b"\nST") == [AckEvent("ack", 3)]
    assert parser.feed(b"OP\n") == [AckEvent("stop")]


def test_a_last_line_without_newline_counts_at_end_of_input() -> None:
    parser = AckParser()
    assert parser.feed(b"ACK\nSTOP") == [AckEvent("ack", 1)]
    assert parser.close() == [AckEvent("stop")]
    assert parser.close() == []


def test_blank_lines_are_skipped() -> None:
    assert AckParser().feed(b"\n\n  \nACK\n\r\n") == [AckEvent("ack", 1)]


def test_an_endless_line_is_junk_once_and_not_buffered_without_bound() -> None:
    parser = AckParser()
    events = []
    for _ in range(100):
        events += parser.feed(b"x" * 1000)
    assert events and all(e.kind == "junk" for e in events)
    assert len(parser._partial) <= MAX_LINE
    # The stream recovers at the next newline.
    assert parser.feed(b"\nACK\n")[-1] == AckEvent("ack", 1)


protocol_lines = st.lists(
    st.one_of(
        st.just(b"ACK"),
        st.integers(1, 10**6).map(lambda n: b"ACK %d" % n),
        st.just(b"START"),
        st.just(b"STOP"),
        st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b),
    ),
    max_size=60,
)


@given(protocol_lines, st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_events_as_one_read(lines: list, cuts: list) -> None:
    data = b"".join(line + b"\n" for line in lines)
    whole = AckParser().feed(data)
    parser = AckParser()
    chunked = []
    pos = 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        chunked += parser.feed(data[pos : pos + cut])
        pos += cut
        if pos >= len(data):
            break
    chunked += parser.feed(data[pos:]) + parser.close()
    assert chunked == whole
    assert sum(e.count for e in whole if e.kind == "ack") == sum(
        parse_line(line).count for line in lines if line.strip()
    )


# -- choose_ack_mode ---------------------------------------------------------------------------------


def test_explicit_modes_are_taken_as_asked_without_reading() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"START\n")
        assert choose_ack_mode("none", r)[0] == "none"
        assert choose_ack_mode("lines", r)[0] == "lines"
        # Nothing was consumed: the START is still there for the ack reader.
        assert os.read(r, 100) == b"START\n"
    finally:
        os.close(r)
        os.close(w)


#: A grace period no test waits out: a choice made "at once" returns long before it, however
#: loaded the machine, and one that waited for it would take this long.
NEVER = 60.0


def _timed(fd: int, grace: float = NEVER) -> tuple:
    started = time.monotonic()
    mode, why, rest = choose_ack_mode("auto", fd, grace=grace)
    return mode, why, rest, time.monotonic() - started


def test_auto_on_a_terminal_is_none_at_once() -> None:
    parent, child = pty.openpty()
    try:
        mode, why, _, took = _timed(child)
    finally:
        os.close(parent)
        os.close(child)
    assert (mode, "terminal" in why, took < NEVER / 2) == ("none", True, True)


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY], ids=["read", "write-only"])
def test_auto_on_dev_null_is_none_at_once(flags: int) -> None:
    fd = os.open(os.devnull, flags)
    try:
        mode, why, _, took = _timed(fd)
    finally:
        os.close(fd)
    assert mode == "none" and "/dev/null" in why and took < NEVER / 2


def test_auto_on_a_closed_descriptor_is_none_at_once() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    mode, why, _, took = _timed(r)
    assert (mode, why) == ("none", "stdin is closed") and took < NEVER / 2


def test_auto_on_a_pipe_at_eof_is_none_at_once() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        mode, why, _, took = _timed(r)
    finally:
        os.close(r)
    assert mode == "none" and "end of file" in why and took < NEVER / 2


def test_auto_on_a_regular_file_is_none(tmp_path) -> None:
    path = tmp_path / "stdin"
    path.write_bytes(b"START\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        mode, why, _, _ = _timed(fd)
    finally:
        os.close(fd)
    assert mode == "none" and "not a pipe" in why


def test_auto_on_a_silent_pipe_is_none_after_the_grace_period() -> None:
    r, w = os.pipe()
    try:
        mode, why, _, took = _timed(r, grace=1.0)
    finally:
        os.close(r)
        os.close(w)
    assert mode == "none" and "nothing" in why and 1.0 <= took < NEVER / 2


def test_auto_on_start_keeps_what_followed_it() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"START\nACK\nACK 2\n")
        mode, why, rest, took = _timed(r)
    finally:
        os.close(r)
        os.close(w)
    assert mode == "lines" and "START" in why and took < NEVER / 2
    assert rest == b"ACK\nACK 2\n"


def test_auto_on_start_written_in_pieces_is_lines() -> None:
    r, w = os.pipe()

    def slowly() -> None:
        for piece in (b"ST", b"AR", b"T", b"\n"):
            time.sleep(0.03)
            os.write(w, piece)

    writer = threading.Thread(target=slowly)
    writer.start()
    try:
        mode, _, rest, _ = _timed(r)
    finally:
        writer.join()
        os.close(r)
        os.close(w)
    assert (mode, rest) == ("lines", b"")


def test_auto_on_a_socket_that_says_start_is_lines() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"start\r\n")
        mode, _, _, _ = _timed(a.fileno())
    finally:
        a.close()
        b.close()
    assert mode == "lines"


def test_auto_on_a_pipe_that_says_something_else_is_none() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"hello\n")
        mode, why, rest, took = _timed(r)
    finally:
        os.close(r)
        os.close(w)
    assert mode == "none" and "not START" in why and rest == b"" and took < NEVER / 2


def test_auto_on_a_pipe_that_never_ends_its_first_line_gives_up() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"x" * 4000)
        mode, _, _, took = _timed(r)
    finally:
        os.close(r)
        os.close(w)
    assert mode == "none" and took < NEVER / 2
