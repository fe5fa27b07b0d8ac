"""Every stop re-sends a count, not a second of throughput (DESIGN §3, "Re-sends are bounded").

Catching up a backlog of 300,000 events at full speed into ``| cat > file`` (the product's default
settle_time and settle_lines), SIGTERM lands at five random moments, and the pipeline starts again
after each: nothing is lost, and what each restart sends again stays within 3,000 lines (before
settle_lines it was a second of throughput: over 100,000 events).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import List, Set

import pytest

from run_helpers import clean_env, command, run_args, seq_of

BACKLOG = 300_000
STOPS = 5
RESEND_BOUND = 3_000


def _seqs(data: bytes) -> List[int]:
    assert data.endswith(b"\n") or not data, f"part of a line: {data[-120:]!r}"
    return [seq_of(line) for line in data.split(b"\n")[:-1]]


@pytest.mark.timeout(300)
def test_sigterm_during_catch_up_into_cat_resends_at_most_3000_and_loses_nothing(
    make_emulator, client_cert, ext_id, tmp_path, rng
):
    emu = make_emulator(backlog=BACKLOG, event_bytes=200)
    out = tmp_path / "events.ndjson"
    args = run_args(
        emu, ext_id, client_cert, tmp_path / "state.json", "--max-events", "10000", settle_time=None
    )
    seen: Set[int] = set()
    resent: List[int] = []
    for stop in range(STOPS + 1):
        last = stop == STOPS
        before = out.stat().st_size if out.exists() else 0
        read_end, write_end = os.pipe()
        with open(out, "ab") as sink, open(tmp_path / "stderr.log", "ab") as err:
            cat = subprocess.Popen(["cat"], stdin=read_end, stdout=sink)
            argv = command(args + (["--once"] if last else []))
            proc = subprocess.Popen(argv, stdout=write_end, stderr=err, env=clean_env())
        os.close(read_end)
        os.close(write_end)
        try:
            if not last:
                deadline = time.monotonic() + 60
                while out.stat().st_size == before and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.02, 0.3))
                assert proc.poll() is None, (
                    "caught up before the stop: " + (tmp_path / "stderr.log").read_text()[-2000:]
                )
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 0, (tmp_path / "stderr.log").read_text()[-2000:]
            cat.wait(30)
        finally:
            for p in (proc, cat):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        with open(out, "rb") as f:
            f.seek(before)
            got = _seqs(f.read())
        if stop > 0:
            resent.append(len([s for s in got if s in seen]))
        seen.update(got)
        if stop == STOPS - 1:
            assert len(seen) < BACKLOG, "caught up before the last stop: the stops missed the catch-up"
    assert seen == set(range(1, BACKLOG + 1)), f"{BACKLOG - len(seen)} events lost"
    assert len(resent) >= STOPS, resent
    assert max(resent) <= RESEND_BOUND, f"re-sent per restart: {resent}"
