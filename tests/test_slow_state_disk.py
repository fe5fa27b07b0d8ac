"""Acceptance: a state disk that takes 2 s per fsync never stops the acknowledgements.

The real process runs under an rsyslog-improg-like consumer against the emulator, with every fsync
on the state directory delayed 2 s through the test-only seam in ``tests/os_faults``. Commits then
sit on the disk for seconds at a time; the recorder thread carries them, so the acknowledgement
reader keeps reading stdin and counting meanwhile (the stats lines show the count moving between
two commits). A subscription lost while a commit is on disk leaves a state file that is valid at
every read, and the run carries on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from ack_helpers import ImprogConsumer, events_named, read_logs
from disk_helpers import OsFaults, state_file_problem
from run_helpers import clean_env, command, run_args

SLOW_FSYNC = 2.0
PAGE = 50


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _argv(emu, cert, ext_id, state: Path) -> List[str]:
    limits = ("--max-events", str(PAGE), "--max-timeout", "1", "--log-format", "json", "--log-level", "debug")
    # A window wide enough that writing goes on while a commit is on disk: the acknowledgements
    # for those lines are what must keep being read.
    limits += ("--max-unacked", "5000")
    return command(run_args(emu, ext_id, cert, state, *limits, stats_interval=1))


def _feed(emu, seconds: float, every: float = 0.25) -> None:
    """Events keep coming: a page's worth every ``every`` seconds for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        emu.add_events(PAGE // 2)
        time.sleep(every)


def _slow_disk_files(tmp_path) -> Tuple[OsFaults, Path, Path, Path]:
    """The injected faults' file, the state directory (made), the state file and the run's log."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    return OsFaults(tmp_path / "os-faults.json"), state_dir, state_dir / "state.json", tmp_path / "stderr.log"


@pytest.mark.timeout(120)
def test_acknowledgements_are_read_and_counted_while_a_commit_is_on_a_slow_disk(
    make_emulator, make_client_cert, ext_id, tmp_path
):
    emu = make_emulator(backlog=PAGE)
    faults, state_dir, state, log = _slow_disk_files(tmp_path)
    argv = _argv(emu, make_client_cert("slow-fsync"), ext_id, state)
    with ImprogConsumer(argv, log, env=clean_env(faults.env())) as improg:
        assert improg.wait_lines(PAGE, 20)
        _wait_for(state.exists, 10, "a state file")
        faults.slow(SLOW_FSYNC, ["fsync"], state_dir)
        _feed(emu, 4 * SLOW_FSYNC + 2)
        faults.clear()
        time.sleep(2 * SLOW_FSYNC + 1)  # a commit begun on the slow disk ends before the stop
        _wait_for(lambda: len(events_named(read_logs(log), "commit")) >= 3, 20, "three commits")
        result = improg.stop()
    assert result.returncode == 0 and not result.killed, result
    records = read_logs(log)
    assert not any("Traceback" in json.dumps(r) for r in records)
    commits = [r["time"] for r in events_named(records, "commit")]
    stats = [(r.get("time"), r["acknowledged"]) for r in events_named(records, "stats")]
    # Between two commit lines at least 2 s apart (one commit on the slow disk all that time),
    # the acknowledged count the stats lines show moved: the acknowledgements were read meanwhile.
    moved = []
    for start, end in zip(commits, commits[1:]):
        inside = [acked for when, acked in stats if start < when < end]
        if len(inside) >= 2 and inside[-1] > inside[0]:
            moved.append((start, end, inside))
    print(f"commits at {commits}; stats {stats}; moving while a commit was on disk: {moved}")
    assert moved, f"the acknowledged count never moved while a commit was on disk: {stats}"
    assert improg.acked == len(improg.lines)


@pytest.mark.timeout(120)
def test_a_subscription_lost_while_a_commit_is_on_disk_leaves_the_state_file_valid(
    make_emulator, make_client_cert, ext_id, tmp_path
):
    emu = make_emulator(backlog=PAGE)
    faults, state_dir, state, log = _slow_disk_files(tmp_path)
    argv = _argv(emu, make_client_cert("slow-fsync-404"), ext_id, state)
    problems: List[str] = []
    seqs: List[int] = []

    def look() -> None:
        problem = state_file_problem(state)
        if problem:
            problems.append(problem)
        elif state.exists():
            seq = json.loads(state.read_bytes())["progress"]["seq"]
            if not seqs or seqs[-1] != seq:
                seqs.append(seq)

    with ImprogConsumer(argv, log, env=clean_env(faults.env())) as improg:
        assert improg.wait_lines(PAGE, 20)
        _wait_for(state.exists, 10, "a state file")
        faults.slow(SLOW_FSYNC, ["fsync"], state_dir)
        emu.add_events(PAGE)
        # The next commit is on the slow disk now; the request after it loses the subscription.
        emu.inject("404")
        deadline = time.monotonic() + 4 * SLOW_FSYNC
        while time.monotonic() < deadline:
            look()
            time.sleep(0.01)
        faults.clear()
        _wait_for(lambda: bool(events_named(read_logs(log), "subscription_lost")), 20, "subscription_lost")
        emu.add_events(PAGE)
        _wait_for(lambda: len(events_named(read_logs(log), "commit")) >= 2, 20, "a commit after the loss")
        look()
        time.sleep(2 * SLOW_FSYNC + 1)  # a commit begun on the slow disk ends before the stop
        result = improg.stop()
    look()
    assert result.returncode == 0 and not result.killed, result
    assert not problems, problems[:3]
    assert seqs == sorted(seqs), f"the state file went back to an older record: {seqs}"
    assert "Traceback" not in log.read_text()
    assert not state_file_problem(state)
