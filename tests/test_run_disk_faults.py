"""Acceptance: a disk that stops taking the state file or a ``>> file`` stdout mid-run is ridden out.

The real process runs against the emulator; after the first pages, the disk fails: for real (a tiny
tmpfs filled to the last byte, root only), or by an errno injected at the OS call through the
test-only seam in ``tests/os_faults``. While it fails the process logs ``disk_fault``, fetches no new
page and keeps the last good token in a state file that stays valid; once the disk works again it
logs ``disk_recovered`` and carries on by itself: every event arrives, in order, exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from ack_helpers import ImprogConsumer, events_named, read_logs, run_argv
from disk_helpers import OsFaults, StateWatcher, fill, try_mount_tmpfs, unmount
from run_helpers import assert_exact_events, clean_env, run_args, split_lines

FIRST = 100
LATER = 50
PAGE = "25"


def _token(state: Path) -> str:
    return json.loads(state.read_bytes())["token"]


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _ride_out(
    runs,
    emu,
    cert,
    ext_id,
    state: Path,
    what: str,
    break_disk,
    mend_disk,
    stdout_file: Optional[Path] = None,
    env=None,
) -> None:
    args = run_args(emu, ext_id, cert, state, "--max-events", PAGE, "--max-timeout", "1", "--ack", "none")
    run = runs.start(args, stdout_file=stdout_file, env=clean_env(env))

    def count() -> int:
        return len(split_lines(run.output, allow_partial_tail=True))

    with StateWatcher(state) as watcher:
        _wait_for(lambda: count() >= FIRST and state.exists(), 20, f"{FIRST} lines and a state file")
        break_disk()
        emu.add_events(LATER)
        fault = run.wait_event("disk_fault", timeout=15, where=lambda r: r.get("what") == what)
        assert fault["level"] == "error", fault
        # A long poll under way when the disk failed ends within --max-timeout; then nothing moves.
        time.sleep(1.5)
        lines_paused, token_paused = count(), _token(state)
        emu.add_events(LATER)
        time.sleep(1.5)
        assert count() == lines_paused, "a new page was fetched while the disk failed"
        assert _token(state) == token_paused, "the saved token moved while the disk failed"
        assert len(run.events("disk_fault")) == 1, "the cause is logged once, then only reminded"
        mend_disk()
        run.wait_event("disk_recovered", timeout=15, where=lambda r: r.get("what") == what)
        _wait_for(lambda: count() >= FIRST + 2 * LATER, 20, "every event after the fault")
        _wait_for(lambda: _token(state) != token_paused, 10, "a commit after the fault")
        run.send(signal.SIGTERM)
        assert run.wait(10) == 0, run.stderr_text[-3000:]
    run.assert_no_traceback()
    assert not run.other_stderr.strip(), run.other_stderr
    assert not watcher.problems, f"the state file was not valid at times: {watcher.problems[:3]}"
    assert watcher.reads > 50
    assert_exact_events(emu, run.lines(), 1, FIRST + 2 * LATER)


@pytest.fixture
def tmpfs(tmp_path: Path):
    where = tmp_path / "small-disk"
    why = try_mount_tmpfs(where, "512k")
    if why:
        pytest.skip(why)
    yield where
    unmount(where)


@pytest.mark.timeout(90)
def test_state_file_on_a_full_tmpfs_pauses_then_carries_on_when_cleaned(
    make_emulator, make_client_cert, ext_id, runs, tmpfs
):
    emu = make_emulator(backlog=FIRST)
    filler = []
    _ride_out(
        runs,
        emu,
        make_client_cert("tmpfs-state"),
        ext_id,
        tmpfs / "state.json",
        "state file",
        break_disk=lambda: filler.append(fill(tmpfs)),
        mend_disk=lambda: filler[0].unlink(),
    )


@pytest.mark.timeout(90)
def test_stdout_file_on_a_full_tmpfs_pauses_then_carries_on_without_a_torn_line(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, tmpfs
):
    emu = make_emulator(backlog=FIRST)
    filler = []
    _ride_out(
        runs,
        emu,
        make_client_cert("tmpfs-out"),
        ext_id,
        tmp_path / "state.json",
        "stdout",
        break_disk=lambda: filler.append(fill(tmpfs)),
        mend_disk=lambda: filler[0].unlink(),
        stdout_file=tmpfs / "events.ndjson",
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "target, call, errno_name",
    [
        ("state file", "write", "ENOSPC"),
        ("state file", "fsync", "EIO"),
        ("state file", "replace", "EROFS"),
        ("state file", "open", "EDQUOT"),
        ("stdout", "write", "EIO"),
        ("stdout", "fsync", "EDQUOT"),
    ],
)
def test_an_errno_injected_at_the_os_call_pauses_then_carries_on(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, target, call, errno_name
):
    emu = make_emulator(backlog=FIRST)
    faults = OsFaults(tmp_path / "os-faults.json")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    under = state_dir if target == "state file" else out_dir
    _ride_out(
        runs,
        emu,
        make_client_cert(f"inject-{call}"),
        ext_id,
        state_dir / "state.json",
        target,
        break_disk=lambda: faults.fail(errno_name, [call], under),
        mend_disk=faults.clear,
        stdout_file=out_dir / "events.ndjson",
        env=faults.env(),
    )


@pytest.mark.timeout(90)
def test_under_improg_acknowledgements_a_failing_state_disk_pauses_then_carries_on(
    make_emulator, make_client_cert, ext_id, tmp_path
):
    """rsyslog's improg never restarts its child: the case this behaviour exists for."""
    emu = make_emulator(backlog=FIRST)
    faults = OsFaults(tmp_path / "os-faults.json")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state = state_dir / "state.json"
    log = tmp_path / "stderr.log"
    argv = run_argv(emu, make_client_cert("improg-disk"), ext_id, state, max_events=int(PAGE))

    def said(name: str) -> bool:
        return bool(events_named(read_logs(log), name))

    with ImprogConsumer(argv, log, env=clean_env(faults.env())) as improg, StateWatcher(state) as watcher:
        assert improg.wait_lines(FIRST, 20)
        _wait_for(state.exists, 10, "a state file")
        faults.fail("EIO", ["replace"], state_dir)
        emu.add_events(LATER)
        _wait_for(lambda: said("disk_fault"), 15, "disk_fault")
        time.sleep(1.5)
        lines_paused, token_paused = len(improg.lines), _token(state)
        emu.add_events(LATER)
        assert improg.quiet_for(1.5), "a new page was fetched while the disk failed"
        assert len(improg.lines) == lines_paused and _token(state) == token_paused
        faults.clear()
        _wait_for(lambda: said("disk_recovered"), 15, "disk_recovered")
        assert improg.wait_lines(FIRST + 2 * LATER, 20)
        _wait_for(lambda: _token(state) != token_paused, 10, "a commit after the fault")
        result = improg.stop()
    assert result.returncode == 0 and not result.killed, result
    assert not watcher.problems, watcher.problems[:3]
    assert "Traceback" not in log.read_text()
    assert_exact_events(emu, improg.lines, 1, FIRST + 2 * LATER)
