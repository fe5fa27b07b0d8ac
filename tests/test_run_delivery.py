"""Acceptance: `kata-events run` as a real process over mutual TLS delivers every event exactly as
the server sent it, in order, across page sizes; `--once` drains and exits; stdout holds events only.
"""

from __future__ import annotations

import json

import pytest

from run_helpers import assert_exact_events, run_args, seq_of


@pytest.mark.timeout(180)
def test_100k_events_across_page_sizes_arrive_in_order_byte_identical(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator()
    cert = make_client_cert("pages")
    state = tmp_path / "state.json"
    out = bytearray()
    # Each stage adds events and drains them with --once in pages of the given size; the backlog
    # sizes make the pages of 1, 7, 1000 and up to 72,000 events all full but the last.
    for added, max_events in ((30, 1), (700, 7), (29270, 1000), (70000, 72000)):
        emu.add_events(added)
        run = runs.complete(
            run_args(
                emu, ext_id, cert, state, "--once", "--max-events", str(max_events), "--log-level", "debug"
            ),
            timeout=120,
        )
        assert run.returncode == 0, run.stderr_text[-3000:]
        run.assert_no_traceback()
        assert not run.other_stderr.strip(), run.other_stderr
        pages = [p["events"] for p in run.events("page")]
        assert pages and max(pages) == min(added, max_events), pages
        out += run.output
    assert out.endswith(b"\n")
    lines = out.split(b"\n")[:-1]
    assert_exact_events(emu, lines, 1, 100000)


@pytest.mark.timeout(90)
def test_once_drains_a_30000_backlog_then_a_second_once_prints_nothing(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=30000)
    cert = make_client_cert("once")
    state = tmp_path / "state.json"
    first = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--max-events", "5000"), timeout=60)
    assert first.returncode == 0, first.stderr_text[-3000:]
    assert_exact_events(emu, first.lines(), 1, 30000)
    assert first.events("caught_up")
    second = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--max-events", "5000"), timeout=30)
    assert second.returncode == 0, second.stderr_text[-3000:]
    assert second.output == b""
    for run in (first, second):
        run.assert_no_traceback()


@pytest.mark.timeout(60)
def test_debug_logging_keeps_stdout_for_event_lines_only(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=500)
    cert = make_client_cert("debug")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--once", "--max-events", "50")
    run = runs.complete(args + ["--log-level", "debug"], timeout=45)
    assert run.returncode == 0, run.stderr_text[-3000:]
    # 500 events in pages of 50: the last page is empty, and an empty page is logged at debug level.
    assert any(r.get("level", "").upper() == "DEBUG" for r in run.logs), run.stderr_text[-3000:]
    assert not run.other_stderr.strip(), run.other_stderr
    lines = run.lines()
    assert len(lines) == 500
    for line in lines:
        event = json.loads(line)
        assert isinstance(event, dict) and isinstance(event.get("EmulatorSeq"), int)
    assert [seq_of(line) for line in lines] == list(range(1, 501))
