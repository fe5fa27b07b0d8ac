"""Re-sends are bounded by a count of lines, not by how the threads happen to be scheduled.

A shipper may have taken (and, in ack mode, acknowledged) lines whose acknowledgement kata-events
has not read yet: its acknowledgement thread can be kept off the CPU on a busy machine while the
writer runs on. Whatever the timing, writing waits while `RECORD_AHEAD_LINES` lines are written
but not recorded, so a kill -9 at any moment re-sends at most `RESEND_BOUND` lines. The worst case
made deterministic: a shipper that acknowledges nothing for a while, then everything at once, and
kata-events killed the moment that acknowledgement is on its stdin, before it can be read.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ack_helpers import ImprogConsumer, run_argv
from run_helpers import RESEND_BOUND

PAGE = 72_000
EVENT_BYTES = 200


def _quiet_count(consumer: ImprogConsumer, quiet: float = 1.5, timeout: float = 60) -> int:
    """Lines read once nothing more arrives for ``quiet`` seconds."""
    assert consumer.wait_lines(1, 30), "no line"
    deadline = time.monotonic() + timeout
    while not consumer.quiet_for(quiet):
        assert time.monotonic() < deadline, "the writer never paused"
    return len(consumer.lines)


@pytest.mark.timeout(120)
def test_unread_acknowledgements_of_a_72000_event_page_resend_at_most_the_bound(
    make_emulator, client_cert, ext_id, tmp_path: Path
) -> None:
    emu = make_emulator(backlog=10, event_bytes=EVENT_BYTES)
    state = tmp_path / "state.json"
    first = ImprogConsumer(run_argv(emu, client_cert, ext_id, state), tmp_path / "stderr.log").start()
    assert first.wait_lines(10, 30)
    time.sleep(0.5)
    first.stop()
    emu.add_events(PAGE)
    argv = run_argv(emu, client_cert, ext_id, state, max_events=PAGE)

    silent = ImprogConsumer(argv, tmp_path / "stderr.log", ack="none").start()
    try:
        ahead = _quiet_count(silent)
        # Before: the whole page (72,000 lines) went out with nothing acknowledged, so an
        # acknowledgement the process had no time to read could cover all of it.
        assert ahead <= RESEND_BOUND, f"{ahead} lines written ahead of any record"
        silent.ack(ahead, batch=True)
    finally:
        silent.kill()  # at once: the acknowledgement may well be unread
    seqs = silent.seqs
    # The acknowledgement may have been read before the kill: then more lines followed it.
    assert len(seqs) >= ahead
    assert seqs == list(range(11, 11 + len(seqs)))

    drain = ImprogConsumer(argv, tmp_path / "stderr.log").start()
    try:
        assert drain.wait_lines(1, 30)
        while not drain.quiet_for(1.5):
            pass
        drain.stop()
    finally:
        drain.kill()
    again = drain.seqs
    assert again[0] <= seqs[-1] + 1, "an acknowledged event was skipped"
    resent = seqs[-1] - again[0] + 1
    print(f"silent shipper: {ahead} lines ahead of the record, {resent} sent again")
    assert resent <= RESEND_BOUND
    assert again == list(range(again[0], emu.next_seq)), "events lost after the restart"
