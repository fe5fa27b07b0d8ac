"""No reader ever gets part of a line, whatever kills the process (DESIGN §3).

kill -9 lands at random moments while kata-events catches up a backlog of 2-8 KB events into a
reader slower than the stream (the pipe stays full, so every write waits for room): every byte the
reader got ends in whole JSON lines. Into a regular file, with a restart after each kill, the file
holds whole lines only: a fragment a kill left in the middle of a write is ended with a newline at
the next start (a ``torn_tail`` log event says so) and no event is glued onto it. The pipe's room
model is also checked against the kernel directly: a write it says fits is never cut.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List

import pytest

from determinism import rounds
from kata_events.delivery.pipe_room import PipeRoom, grow_pipe
from kata_events.state.progress import joined
from run_helpers import KataRun, run_args, seq_of

KILLS = rounds(20)
#: Event sizes: each kill picks one of these emulators (lines of 2 to 8 KB).
EVENT_SIZES = (2048, 4096, 6144, 8192)
BACKLOG = 6000
FILE_BACKLOG = 30_000
#: How every emulator event line begins.
HEAD = b'{"EmulatorSeq":'


class SlowReader(KataRun):
    """A reader slower than kata-events: 16 KB every 4 ms (about 4 MB/s), so the pipe stays full."""

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 16384)
            if not chunk:
                break
            with self._cond:
                self._out += chunk
                self._cond.notify_all()
            time.sleep(0.004)
        with self._cond:
            self._cond.notify_all()


def _assert_whole_json_lines(data: bytes, what: str) -> List[int]:
    assert data.endswith(b"\n"), f"{what}: ends with part of a line: {data[-120:]!r}"
    seqs = []
    for line in data.split(b"\n")[:-1]:
        try:
            json.loads(line)
        except ValueError:
            raise AssertionError(f"{what}: a line is not a whole JSON object: {line[:120]!r}") from None
        seqs.append(seq_of(line))
    return seqs


@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_into_a_full_pipe_leaves_whole_lines(
    make_emulator, client_cert, ext_id, runs, tmp_path, rng
):
    emulators = {size: make_emulator(backlog=BACKLOG, event_bytes=size) for size in EVENT_SIZES}
    for kill in range(KILLS):
        size = rng.choice(EVENT_SIZES)
        emu = emulators[size]
        args = run_args(emu, ext_id, client_cert, tmp_path / f"state-{size}.json", "--max-events", "2000")
        run = SlowReader(args, tmp_path)
        runs.started.append(run)
        run.wait_lines(1, timeout=30)
        time.sleep(rng.uniform(0.05, 1.0))
        unread = run.unread_stdout()
        assert run.returncode is None, run.stderr_text[-2000:]
        run.kill9()
        assert unread > 0, f"kill {kill}: the pipe was not kept full"
        _assert_whole_json_lines(run.output, f"kill {kill} ({size} B events)")


@pytest.mark.timeout(240)
def test_kill_9_into_a_regular_file_then_restart_leaves_whole_lines_only(
    make_emulator, client_cert, ext_id, runs, tmp_path, rng
):
    emu = make_emulator(backlog=FILE_BACKLOG, event_bytes=2048)
    out = tmp_path / "events.ndjson"
    args = run_args(emu, ext_id, client_cert, tmp_path / "state.json", "--max-events", "2000")
    torn: List[int] = []
    for _ in range(KILLS):
        before = out.stat().st_size if out.exists() else 0
        run = runs.start(args, stdout_file=out)
        deadline = time.monotonic() + 30
        while (out.stat().st_size if out.exists() else 0) <= before and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.04))
        assert run.returncode is None, run.stderr_text[-2000:]
        run.kill9()
        torn += [r["bytes"] for r in run.events("torn_tail")]
    last = runs.complete(args + ["--once"], timeout=120, stdout_file=out)
    assert last.returncode == 0, last.stderr_text[-2000:]
    torn += [r["bytes"] for r in last.events("torn_tail")]
    data = out.read_bytes()
    assert data.endswith(b"\n")
    fragments: Dict[int, bytes] = {}
    seen = set()
    for number, line in enumerate(data.split(b"\n")[:-1]):
        try:
            json.loads(line)
        except ValueError:
            fragments[number] = line
            continue
        seen.add(seq_of(line))
    # A line that is not whole JSON is exactly a fragment a start found and ended (and logged):
    # the start of an event, never an event glued onto part of another.
    assert sorted(len(f) for f in fragments.values()) == sorted(torn), (fragments, torn)
    for fragment in fragments.values():
        assert fragment and fragment.count(HEAD) <= 1, fragment[:200]
        cut_after_seq = re.match(rb'\{"EmulatorSeq":(\d+),', fragment)
        if cut_after_seq:
            assert emu.event_bytes(int(cut_after_seq.group(1))).startswith(fragment)
        else:  # a write torn within the first bytes of a line: the start of the head or of the seq
            assert HEAD.startswith(fragment) or re.fullmatch(rb'\{"EmulatorSeq":\d+', fragment), fragment
    assert seen == set(range(1, max(seen) + 1)), "an event is missing"
    assert max(seen) == FILE_BACKLOG


def test_a_file_ending_mid_line_gets_the_fragment_ended_before_the_first_event(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=50)
    out = tmp_path / "events.ndjson"
    out.write_bytes(emu.event_bytes(1) + b"\n" + emu.event_bytes(2)[:77])
    args = run_args(emu, ext_id, client_cert, tmp_path / "state.json", "--once")
    run = runs.complete(args, timeout=60, stdout_file=out)
    assert run.returncode == 0, run.stderr_text[-2000:]
    assert [r["bytes"] for r in run.events("torn_tail")] == [77]
    lines = out.read_bytes().split(b"\n")
    assert lines[1] == emu.event_bytes(2)[:77]
    assert lines[2] == emu.event_bytes(1), "the first event starts a line of its own"
    again = runs.complete(args, timeout=60, stdout_file=out)
    assert again.events("torn_tail") == [], "a file ending in a newline is left alone"


def test_the_pipe_room_model_never_offers_room_the_kernel_does_not_have(rng):
    """Random writes (tiny, event-sized, larger than a page) and reads of any size: a write the
    model says fits is always taken whole by a non-blocking write."""
    for want in (65536, 1 << 20):
        r, w = os.pipe()
        try:
            os.set_blocking(w, False)
            os.set_blocking(r, False)
            room = PipeRoom(w, grow_pipe(w, want))
            whole = 0
            for _ in range(20_000):
                n = rng.choice([rng.randint(1, 300), rng.randint(2000, 8200), rng.randint(1, 70_000)])
                if n <= room.room():
                    written = os.write(w, b"x" * n)
                    assert written == n, f"a write of {n} said to fit was cut at {written}"
                    room.wrote(written)
                    whole += 1
                if rng.random() < 0.5:
                    try:
                        os.read(r, rng.randint(1, 20_000))
                    except BlockingIOError:
                        pass
            assert whole > 5_000 and not room.unsure
        finally:
            os.close(r)
            os.close(w)


def test_foreign_bytes_in_the_pipe_make_the_model_wait_until_it_is_empty():
    r, w = os.pipe()
    try:
        room = PipeRoom(w, grow_pipe(w, 65536))
        os.write(w, b"x" * 100)  # someone else's bytes
        assert room.room() == 0
        os.read(r, 100)
        assert room.room() == 65536
        room.wrote(10)
        os.write(w, b"x" * 10)
        os.write(w, b"y" * 5)  # more than the model wrote
        assert room.room() == 0
    finally:
        os.close(r)
        os.close(w)


def test_the_writer_grows_its_pipe(tmp_path):
    r, w = os.pipe()
    try:
        from kata_events.delivery.writer import LineWriter

        writer = LineWriter(w)
        assert writer.room is not None
        assert writer.room.size == int(Path("/proc/sys/fs/pipe-max-size").read_text())
    finally:
        os.close(r)
        os.close(w)


def test_a_line_larger_than_the_pipe_is_written_in_parts_and_said_once():
    from kata_events.delivery.writer import LineWriter

    r, w = os.pipe()
    try:
        writer = LineWriter(w)
        told: List[tuple] = []
        writer.on_oversize = lambda length, capacity: told.append((length, capacity))
        assert writer.room is not None
        big = b"x" * (writer.room.capacity + 1000)
        received = bytearray()

        def read() -> None:
            while len(received) < 2 * len(big) + 5:
                received.extend(os.read(r, 1 << 20))

        import threading

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        writer.write_bytes(joined([big, b"{}"]))
        writer.write_bytes(joined([big]))
        reader.join(30)
        assert bytes(received) == big + b"\n{}\n" + big + b"\n"
        assert told == [(len(big) + 1, writer.room.capacity)]
    finally:
        os.close(r)
        os.close(w)
