"""The settle rule on a pipe: a stop counts nothing the reader took in the last settle_time seconds.

A shipper may read lines and drop them while it shuts down (Fluent Bit's exec input reads on after
its engine stopped flushing, and signals its child only at the end of its grace period). So while
the process runs the record follows what the reader has taken (a kill -9 of kata-events leaves the
reader and its lines alive), and a stop writes back the point the reader had reached settle_time
earlier. A clean ``--once`` end waits until its last line has settled instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterator, List, Tuple

import pytest

from run_helpers import clean_env, command, run_args

SETTLE = 1.5
RATE = 400


#: The test's reader: copies its stdin to its stdout, reading at most ``size`` bytes at a time and
#: pausing ``pause`` seconds after each read, and logs each read to the file named by its first
#: argument: when the read began, and the lines taken through it. Whatever lines kata-events saw
#: leave the pipe by a moment were taken by reads begun before that moment, so the log bounds them
#: from above however this reader is scheduled (cat's copy to a file lags its read on a busy machine).
READER = (
    "import os, sys, time\n"
    "log, size, pause = open(sys.argv[1], 'w'), int(sys.argv[2]), float(sys.argv[3])\n"
    "lines = 0\n"
    "while True:\n"
    "    began = time.time()\n"
    "    data = os.read(0, size)\n"
    "    if not data:\n"
    "        break\n"
    "    lines += data.count(b'\\n')\n"
    "    log.write(f'{began} {lines}\\n')\n"
    "    log.flush()\n"
    "    os.write(1, data)\n"
    "    time.sleep(pause)\n"
)


def reader(tmp_path, size: int = 65536, pause: float = 0.0) -> List[str]:
    """The command of a `READER` logging to tmp_path/reads.log."""
    return [sys.executable, "-c", READER, str(tmp_path / "reads.log"), str(size), str(pause)]


class ReadLog:
    """The reader's log of its reads: what it can have taken by a moment."""

    def __init__(self, path) -> None:
        self.path = path

    def read_by(self, when: float) -> int:
        """An upper bound of the lines taken by ``when``: those of the reads begun by then."""
        text = self.path.read_text() if self.path.exists() else ""
        lines = 0
        for record in text.split("\n")[:-1]:  # a last record being written has no newline yet
            began, through = record.split()
            if float(began) > when:
                break
            lines = int(through)
        return lines


@contextlib.contextmanager
def piped_to(args: List[str], reader_argv: List[str], tmp_path) -> Iterator[Tuple[Any, Any, ReadLog]]:
    """kata-events writing into a pipe that ``reader_argv`` (a `reader`) reads, copying to
    tmp_path/taken.ndjson; yields once the reader has taken a line, and ends both."""
    read_end, write_end = os.pipe()
    with open(tmp_path / "taken.ndjson", "wb") as out, open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(command(args), stdout=write_end, stderr=err, env=clean_env())
        reader = subprocess.Popen(reader_argv, stdin=read_end, stdout=out)
    os.close(read_end)
    os.close(write_end)
    reads = ReadLog(tmp_path / "reads.log")
    try:
        deadline = time.monotonic() + 20
        while reads.read_by(time.time()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc, reader, reads
    finally:
        for p in (proc, reader):
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_for_lines(reads: ReadLog, lines: int, timeout: float = 60.0) -> None:
    """Wait until the reader has taken ``lines`` lines."""
    deadline = time.monotonic() + timeout
    while reads.read_by(time.time()) < lines:
        assert time.monotonic() < deadline, f"the reader took fewer than {lines} lines in {timeout:g} s"
        time.sleep(0.05)


def settle_line(tmp_path, reads: ReadLog) -> Tuple[dict, int]:
    """The run's settle log line, and the lines the reader had taken settle_time before it."""
    logs = [json.loads(line) for line in (tmp_path / "stderr.log").read_bytes().splitlines()]
    settle = [r for r in logs if r.get("event") == "settle"]
    assert settle, logs[-5:]
    decided = datetime.strptime(settle[0]["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return settle[0], reads.read_by(decided.timestamp() - SETTLE)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGTERM", "reader killed"])
def test_a_stop_counts_nothing_the_reader_took_within_the_settle_time(
    make_emulator, client_cert, ext_id, runs, tmp_path, how
):
    emu = make_emulator(backlog=0, rate=RATE, event_bytes=300)
    state = tmp_path / "state.json"
    args = run_args(
        emu, ext_id, client_cert, state, "--max-events", "50", "--max-timeout", "1", settle_time=SETTLE
    )
    taken = tmp_path / "taken.ndjson"
    with piped_to(args, reader(tmp_path), tmp_path) as (proc, shipper, reads):
        time.sleep(3.0)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            shipper.kill()  # the shipper dies: the next write fails with EPIPE
        assert proc.wait(10) == 0
        shipper.wait(10)
        time.sleep(0.1)
    settle, limit = settle_line(tmp_path, reads)
    assert settle["settle_time"] == SETTLE, settle
    # Everything read within SETTLE before the stop was decided (the settle line's time) must come
    # again; the re-send stays near the window.
    got_before = taken.read_bytes().count(b"\n")
    again = runs.complete(args + ["--once"], timeout=30)
    assert again.returncode == 0, again.stderr_text[-2000:]
    assert again.seqs(), again.stderr_text[-3000:]
    first = again.seqs()[0]
    assert first <= limit + 1, f"restarted at {first}: lines read after {limit} within the settle time lost"
    assert got_before - first + 1 <= (SETTLE + 1.0) * RATE + 100, "re-sent far more than the settle time"


@pytest.mark.timeout(60)
def test_once_on_a_pipe_waits_for_its_last_line_to_settle_then_commits_it(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=500, event_bytes=300)
    state = tmp_path / "state.json"
    args = run_args(emu, ext_id, client_cert, state, "--once", "--log-level", "debug", settle_time=SETTLE)
    run = runs.complete(args, timeout=30)
    assert run.returncode == 0 and len(run.lines()) == 500
    last_page = run.events("page")[-1]["_at"]
    assert run.exited_at - last_page >= SETTLE - 0.2, "exited before the last line settled"
    assert not run.events("settle")
    assert runs.complete(args, timeout=30).lines() == []


@pytest.mark.timeout(60)
def test_sigterm_while_once_waits_for_the_settle_goes_back(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=0, event_bytes=300)
    state = tmp_path / "state.json"
    assert runs.complete(run_args(emu, ext_id, client_cert, state, "--once")).returncode == 0
    emu.add_events(500)
    args = run_args(emu, ext_id, client_cert, state, "--once", settle_time=5)
    run = runs.start(args)
    run.wait_event("caught_up", timeout=20)
    time.sleep(0.5)
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert run.wait_event("settle")
    again = runs.complete(run_args(emu, ext_id, client_cert, state, "--once"), timeout=30)
    assert again.seqs()[:1] == [1], "the lines taken within the settle time must come again"


@pytest.mark.timeout(90)
def test_a_stop_inside_the_first_page_of_a_new_subscription_goes_back_too(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    """No token before the first page: the stop still writes back the point the reader had reached
    settle_time earlier (in the progress record), and the restart's new subscription skips exactly
    that much. Before, the lines counted as delivered and the restart sent the page from its start."""
    emu = make_emulator(backlog=72_000, event_bytes=200)
    state = tmp_path / "state.json"
    args = run_args(
        emu, ext_id, client_cert, state, "--max-events", "72000", "--max-timeout", "1", settle_time=SETTLE
    )
    taken = tmp_path / "taken.ndjson"
    # A reader taking at most 400 KB a second (about 600 lines of 200 B): a page of 72,000 takes it
    # two minutes, and the settle time holds fewer lines than settle_lines.
    with piped_to(args, reader(tmp_path, 4096, 0.01), tmp_path) as (proc, _shipper, reads):
        # The reader must have passed a delivery point (one per batch of at most 1 MiB, 1,600 lines)
        # settle_time before the stop, however slowly the machine runs: wait for 2,000 lines, then
        # for more than the settle time.
        wait_for_lines(reads, 2_000)
        time.sleep(SETTLE + 1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    settle, limit = settle_line(tmp_path, reads)
    assert settle["level"] == "info", settle
    got_before = taken.read_bytes().count(b"\n")
    assert got_before < 72_000, "the stop was meant to land inside the first page"
    again = runs.complete(args + ["--once", "--settle-time", "0"], timeout=60)
    assert again.returncode == 0, again.stderr_text[-2000:]
    skipped = again.wait_event("resume")["events"]
    first = again.seqs()[0]
    assert first == 1 + skipped and skipped > 0
    assert first <= limit + 1, f"restarted at {first}: lines read after {limit} within the settle time lost"
    assert again.seqs() == list(range(first, emu.next_seq))
