"""Files in the state directory cannot be turned against kata-events (often run as root).

The real ``kata-events run`` (and ``check``) against the emulator: a symbolic link planted where
kata-events writes (the state file, its lock, its progress record) is refused with a message naming
it (exit 73), and the file it points to is byte-identical afterwards; a state directory every
account can write to without the sticky bit is refused at start with the fix; a group-writable one
is warned about. No traceback anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from run_helpers import run_args

PRECIOUS = b"root:x:0:0:precious bytes another account wants overwritten\n"
NAMES = ("state.json", "state.json.lock", "state.json.progress")


def _plant(directory: Path, name: str, tmp_path: Path) -> Path:
    """A link called ``name`` in ``directory`` to a file outside it; returns the target."""
    target = tmp_path / f"victim-{name}"
    target.write_bytes(PRECIOUS)
    os.symlink(target, directory / name)
    return target


def _state_dir(tmp_path: Path, mode: int) -> Path:
    directory = tmp_path / f"state-{mode:o}"
    directory.mkdir()
    os.chmod(directory, mode)
    return directory


def _run_once(runs, emu, ext_id: str, cert, directory: Path):
    """``run --once`` with its state file in ``directory``."""
    return runs.complete(run_args(emu, ext_id, cert, directory / "state.json", "--once"), timeout=30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dir_mode", [0o700, 0o1777], ids=["private", "sticky-world-writable"])
def test_a_link_at_each_file_kata_events_writes_is_refused_and_its_target_untouched(
    make_emulator, client_cert, ext_id, runs, tmp_path, dir_mode
):
    emu = make_emulator(backlog=30)
    for name in NAMES:
        (tmp_path / name).mkdir()
        directory = _state_dir(tmp_path / name, dir_mode)
        target = _plant(directory, name, tmp_path / name)
        run = _run_once(runs, emu, ext_id, client_cert, directory)
        assert run.returncode == 73, (name, run.stderr_text[-2000:])
        assert run.lines() == []
        fatal = run.wait_event("fatal")
        assert f"{directory / name} is a symbolic link" in fatal["message"], fatal["message"]
        assert f"rm {directory / name}" in fatal["message"]
        assert target.read_bytes() == PRECIOUS, name
        run.assert_no_traceback()


@pytest.mark.timeout(60)
def test_a_state_directory_every_account_can_write_without_sticky_bit_is_refused(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=30)
    directory = _state_dir(tmp_path, 0o777)
    targets = [_plant(directory, name, tmp_path) for name in NAMES]
    run = _run_once(runs, emu, ext_id, client_cert, directory)
    assert run.returncode == 73, run.stderr_text[-2000:]
    fatal = run.wait_event("fatal")
    assert f"state directory {directory} can be written by every account" in fatal["message"]
    assert f"chmod o-w {directory}" in fatal["message"] and "--state-file" in fatal["message"]
    assert all(t.read_bytes() == PRECIOUS for t in targets)
    run.assert_no_traceback()


@pytest.mark.timeout(60)
def test_a_group_writable_state_directory_is_warned_about_and_used(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=30)
    directory = _state_dir(tmp_path, 0o770)
    run = _run_once(runs, emu, ext_id, client_cert, directory)
    assert run.returncode == 0, run.stderr_text[-2000:]
    assert len(run.lines()) == 30
    warning = run.wait_event("state", where=lambda r: "can be written by its group" in r["message"])
    assert warning["level"] == "warning" and f"chmod 700 {directory}" in warning["message"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, status", [(0o777, "FAIL"), (0o770, "warn")])
def test_check_reports_the_state_directory(make_emulator, client_cert, ext_id, tmp_path, mode, status):
    emu = make_emulator()
    directory = _state_dir(tmp_path, mode)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kata_events",
            "check",
            *run_args(emu, ext_id, client_cert, directory / "s.json"),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [
        line for line in result.stderr.splitlines() if line.startswith(status) and str(directory) in line
    ]
    assert lines, result.stderr
    if status == "FAIL":
        assert result.returncode == 73 and "chmod o-w" in lines[0]
    else:
        assert result.returncode == 0 and "chmod 700" in lines[0]
