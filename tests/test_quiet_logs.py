"""Acceptance: steady streaming is quiet at INFO — the stats line and changes of state only.

At 20 events/s with a 1 s long poll a run gets a page a second or more; each used to log a ``page`` line
at INFO, drowning the warnings. Those lines are at DEBUG now.
"""

from __future__ import annotations

import signal

import pytest

from run_helpers import run_args


@pytest.mark.timeout(90)
def test_20_events_a_second_log_only_the_stats_line_and_changes_of_state(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(rate=20)
    args = run_args(emu, ext_id, client_cert, tmp_path / "s.json", "--max-timeout", "1", stats_interval=4)
    run = runs.start(args)
    # Two stats periods of pages at 20 events a second: a page line at INFO would show many times.
    first = run.wait_event("stats", timeout=30)
    run.wait_event("stats", timeout=30, where=lambda record: record is not first)
    run.wait_lines(150, timeout=30)
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0, run.stderr_text[-3000:]
    info = [r for r in run.logs if r["level"] == "info"]
    print(f"{len(run.lines())} events; INFO lines: {[r['event'] for r in info]}")
    assert len(info) <= 8, [r["message"] for r in info]
    assert [r for r in info if r["event"] == "stats"], "the periodic stats line is still at INFO"
    assert not run.events("page")
