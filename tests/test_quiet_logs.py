"""Acceptance: steady streaming is quiet at INFO — the stats line and changes of state only.

At 20 events/s with a 1 s long poll a run gets a page a second; each used to log a ``page`` line
at INFO, drowning the warnings. Those lines are at DEBUG now.
"""

from __future__ import annotations

import signal
import time

import pytest

from run_helpers import run_args


@pytest.mark.timeout(90)
def test_20_events_a_second_for_25_seconds_log_at_most_8_info_lines(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(rate=20)
    args = run_args(emu, ext_id, client_cert, tmp_path / "s.json", "--max-timeout", "1", stats_interval=10)
    run = runs.start(args)
    time.sleep(25)
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0, run.stderr_text[-3000:]
    info = [r for r in run.logs if r["level"] == "info"]
    print(f"{len(run.lines())} events in 25 s; INFO lines: {[r['event'] for r in info]}")
    assert len(run.lines()) >= 400
    assert len(info) <= 8, [r["message"] for r in info]
    assert [r for r in info if r["event"] == "stats"], "the periodic stats line is still at INFO"
    assert not run.events("page")
