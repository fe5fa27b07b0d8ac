"""Acceptance: whatever the server sends, the process's memory stays bounded.

A 600 MB event (a broken server or proxy) and an event nested 300,000 levels deep, both made by the
emulator as it sends them: the real process skips the event with an ``event_skipped`` error, delivers
every event after it, and its peak RSS (VmHWM, read from /proc while it runs) stays under 256 MB.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from run_helpers import assert_exact_events, run_args

EVENTS = 250
RSS_LIMIT_MB = 256

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "fault, reason, size",
    [
        ("huge_event", "larger than max_event_bytes", 600_000_000),
        ("deep_event", "nested too deep", 600_000),
    ],
)
def test_a_hostile_event_is_skipped_in_bounded_memory_and_the_rest_delivered(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, fault, reason, size
):
    emu = make_emulator(backlog=EVENTS)
    emu.inject(fault)
    cert = make_client_cert("hostile")
    run = runs.start(run_args(emu, ext_id, cert, tmp_path / "state.json", "--max-events", "100"))
    skipped = run.wait_event("event_skipped", timeout=240)
    run.wait_lines(EVENTS, timeout=60)
    peak = peak_rss_mb(run.pid)
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    print(f"{fault}: {skipped['bytes'] / 1e6:.1f} MB event skipped, peak RSS {peak:.0f} MB")
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert (skipped["index"], skipped["reason"]) == (0, reason)
    assert skipped["bytes"] >= 0.99 * size
    assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"
    run.assert_no_traceback()
