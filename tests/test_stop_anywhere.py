"""Acceptance: a stop lands anywhere and the run still ends cleanly, 50 times over.

The real process runs against the emulator and gets SIGTERM, SIGINT or SIGHUP while it is inside
one of five moments: an idle long poll, the read of a page's body (trickling), a write to a full
stdout pipe, a commit on a state disk that takes 1 s per fsync (the ``tests/os_faults`` seam), and
the sleep before a retry (HTTP 503). Which signal, and how long after reaching the moment it is
sent, come from the suite's seed (``KATA_TEST_SEED``; printed with every failure). Every time:
exit 0, no traceback, and the state file, where there is one, a valid state file. The fifty runs
(`rounds`: all unless KATA_TEST_ROUNDS names a share) are five tests, one per moment, so that they
spread over the suite's workers.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Callable, List, Tuple

import pytest

from determinism import SEED, rounds
from disk_helpers import OsFaults, state_file_problem
from run_helpers import clean_env, run_args

MOMENTS = ("long poll", "page read", "write", "commit", "retry sleep")
RUNS = rounds(50, len(MOMENTS))
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def plan(seed: int) -> List[Tuple[str, float, int]]:
    """(moment, seconds after reaching it, signal) for each run: every moment equally often."""
    rng = random.Random(seed)
    runs = [
        (MOMENTS[i % len(MOMENTS)], round(rng.uniform(0.0, 0.6), 3), rng.choice(SIGNALS)) for i in range(RUNS)
    ]
    rng.shuffle(runs)
    return runs


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("moment", MOMENTS)
def test_fifty_stops_at_varied_moments_end_cleanly(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, moment
):
    cert = make_client_cert("stop-anywhere")
    faults = OsFaults(tmp_path / "os-faults.json")
    emu = make_emulator(default_max_timeout=300) if moment == "long poll" else make_emulator()
    for number, (planned, after, sig) in enumerate(plan(SEED)):
        if planned != moment:
            continue
        where = f"seed {SEED}, run {number}: {signal.Signals(sig).name} {after} s into the {moment}"
        state_dir = tmp_path / f"run-{number}"
        state_dir.mkdir()
        state = state_dir / "state.json"
        args = run_args(emu, ext_id, cert, state, "--max-events", "200", "--max-timeout", "300")
        served = emu.requests_served

        def asked(what: str, emu=emu, served=served, where=where) -> None:
            _wait(lambda: emu.requests_served > served, 20, f"{what} ({where})")

        if moment == "long poll":
            run = runs.start(args)
            asked("the long poll")
        elif moment == "page read":
            emu.inject("trickle_body", delay=0.2)
            run = runs.start(args)
            asked("the trickling page")
        elif moment == "write":
            run = runs.start(args, hold_stdout=True)
            asked("the first request")
            emu.add_events(4000)
            _wait(lambda run=run: run.unread_stdout() >= 65536, 20, f"a full stdout pipe ({where})")
        elif moment == "commit":
            faults.slow(1.0, ["fsync"], state_dir)
            run = runs.start(args, env=clean_env(faults.env()))
            asked("the first request")
            emu.add_events(400)
            run.wait_lines(200, timeout=20)  # a page is out: its commit is on the slow disk now
        else:
            emu.inject("503", count=20)
            run = runs.start(args)
            run.wait_event("retry", timeout=20)
        time.sleep(after)
        run.send(sig)
        if moment == "write":
            run.release_stdout()
        code = run.wait(30)
        faults.clear()
        assert code == 0, f"{where}: exit {code}\n{run.stderr_text[-3000:]}"
        assert "Traceback" not in run.stderr_text, f"{where}\n{run.stderr_text[-3000:]}"
        problem = state_file_problem(state)
        assert not problem, f"{where}: {problem}"
        stop = run.wait_event("stop", timeout=1)
        assert stop["exit_code"] == 0, f"{where}: {stop}"
        emu.clear_faults()
