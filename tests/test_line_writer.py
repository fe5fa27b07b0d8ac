"""Writing stdout over real pipes: whole batches, a stop lands on a line boundary, failures are named."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from kata_events.delivery.acks import AckDelivery
from kata_events.delivery.writer import ConsumerGone, LineWriter, OutputFailed, WriteStopped
from kata_events.state.progress import joined
from kata_events.state.store import StateNotWritable

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def _pipe():
    r, w = os.pipe()
    return r, w


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_a_batch_is_written_whole_with_one_newline_per_line() -> None:
    r, w = _pipe()
    try:
        writer = LineWriter(w)
        assert writer.write_bytes(joined([b'{"a":1}', b'{"b":"\xd0\xb6"}'])) == 19
        assert _drain(r) == b'{"a":1}\n{"b":"\xd0\xb6"}\n'
    finally:
        os.close(r)
        os.close(w)


def test_a_reader_that_went_away_is_consumer_gone_not_a_traceback() -> None:
    r, w = _pipe()
    os.close(r)
    try:
        with pytest.raises(ConsumerGone):
            LineWriter(w).write_bytes(joined([b"{}"]))
    finally:
        os.close(w)


def test_a_stop_while_the_pipe_is_full_ends_on_a_line_boundary() -> None:
    r, w = _pipe()
    stop = threading.Event()
    try:
        writer = LineWriter(w, should_stop=stop.is_set)
        size = fcntl.fcntl(w, F_GETPIPE_SZ)  # the writer grows the pipe
        line = b"x" * 999  # 1000 bytes with its newline: the pipe fills mid-line
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(WriteStopped):
            # After the stop the reader drains a few pages in small pieces (a pipe frees room a page
            # at a time), so the cut line completes; nothing after it is written.
            def slow_reader() -> None:
                stop.wait()
                time.sleep(0.05)
                for _ in range(40):
                    try:
                        os.read(r, 256)
                    except OSError:
                        return
                    time.sleep(0.005)

            reader = threading.Thread(target=slow_reader, daemon=True)
            reader.start()
            writer.write_bytes(joined([line] * (size // 1000 + 50)))
        reader.join(5)
        assert time.monotonic() - started < 2.0
        data = _drain(r)
        assert data.endswith(b"\n"), "the line under way when the stop came was completed"
    finally:
        os.close(r)
        os.close(w)


def test_a_descriptor_made_non_blocking_by_someone_else_waits_instead_of_giving_up() -> None:
    r, w = _pipe()
    try:
        os.set_blocking(w, False)
        writer = LineWriter(w)
        writer._made_nonblocking = False  # as when stdout and stderr share the pipe
        size = fcntl.fcntl(w, F_GETPIPE_SZ)
        received = bytearray()
        done = threading.Event()

        def reader() -> None:
            time.sleep(0.2)
            while not done.is_set() or len(received) < size * 2:
                try:
                    chunk = os.read(r, 65536)
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                if not chunk:
                    break
                received.extend(chunk)
                if len(received) >= size * 2:
                    break

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        writer.write_bytes(joined([b"y" * 1023] * (size * 2 // 1024)))
        done.set()
        t.join(5)
        assert len(received) == (size * 2 // 1024) * 1024
    finally:
        os.close(r)
        os.close(w)


def test_a_full_disk_is_output_failed_not_a_traceback() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OutputFailed, match="No space left"):
            LineWriter(fd).write_bytes(joined([b"{}"]))
    finally:
        os.close(fd)


def test_a_commit_failing_on_the_ack_reader_thread_pauses_and_a_retry_saves_it_later() -> None:
    out_r, out_w = _pipe()
    in_r, in_w = _pipe()
    disk_full = threading.Event()
    disk_full.set()
    saved: list = []

    def commit(point) -> None:
        if disk_full.is_set():
            raise StateNotWritable("/state/x.token is not writable: No space left on device")
        saved.append(point.token)

    delivery = AckDelivery(
        LineWriter(out_w), commit, on_stop=lambda reason: None, max_unacked=10, ack_timeout=60, stdin_fd=in_r
    )
    try:
        delivery.write([b'{"a":1}'])
        delivery.end_page("token-1")
        os.write(in_w, b"START\nACK\n")
        deadline = time.monotonic() + 5
        while not delivery.health.paused and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivery.health.paused, "the failed commit did not pause the delivery"
        assert "No space left" in (delivery.health.cause() or "")
        assert delivery.recorder.committed_pages == 0 and delivery.failure is None
        delivery.retry()  # the disk still fails: still paused, nothing saved
        assert delivery.health.paused and not saved
        disk_full.clear()
        delivery.retry()
        assert saved == ["token-1"] and delivery.recorder.committed_pages == 1
        assert not delivery.health.paused
    finally:
        os.write(in_w, b"STOP\n")
        for fd in (out_r, out_w, in_w):
            os.close(fd)
