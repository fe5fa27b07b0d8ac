"""Acceptance: `kata-events state show|reset`, and a state file of another external system refused.

The real commands against state files real runs left: a second integration pointed at the first
one's state file exits 78 and leaves it byte for byte as it was; ``state reset`` is refused (75)
while a run holds the lock, then moves the state aside so the next run starts a new subscription;
``state show`` never prints the whole token.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from determinism import fixed_uuid
from run_helpers import clean_env, installed_command, run_args


def kata(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed_command()), *args], capture_output=True, env=clean_env(), timeout=30, text=True
    )


@pytest.mark.timeout(60)
def test_a_state_file_of_another_external_system_is_refused_and_left_untouched(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=10)
    state = tmp_path / "state.json"
    first = runs.complete(run_args(emu, ext_id, client_cert, state, "--once"), timeout=30)
    assert first.returncode == 0, first.stderr_text[-3000:]
    before = state.read_bytes()
    neighbours = sorted(p.name for p in tmp_path.iterdir())
    served = emu.requests_served
    other = fixed_uuid()
    second = runs.complete(run_args(emu, other, client_cert, state, "--once"), timeout=30)
    assert second.returncode == 78, second.stderr_text[-3000:]
    fatal = second.wait_event("fatal", timeout=1)
    print(fatal["message"])
    assert ext_id in fatal["message"] and other in fatal["message"]
    assert "state reset" in fatal["message"] and "--state-file" in fatal["message"]
    assert state.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == neighbours
    assert emu.requests_served == served, "a refused run must not ask the server anything"
    assert second.output == b""
    second.assert_no_traceback()


@pytest.mark.timeout(90)
def test_state_show_then_reset_refused_while_running_then_a_backup_and_a_new_subscription(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=20)
    state = tmp_path / "state.json"
    # A long poll of a minute after the 20 events: the token read below stays the saved one while
    # `state show` runs (with 1 s polls, each empty answer's token replaced it).
    args = run_args(emu, ext_id, client_cert, state, "--max-timeout", "60")
    run = runs.start(args)
    run.wait_lines(20, timeout=20)
    deadline = time.monotonic() + 10
    while not state.exists():  # the commit follows the reader's drain
        assert time.monotonic() < deadline, "no commit"
        time.sleep(0.05)
    token = json.loads(state.read_text())["token"]

    shown = kata("state", "show", "--state-file", str(state))
    print(shown.stdout)
    assert shown.returncode == 0, shown.stderr
    assert ext_id in shown.stdout and emu.url in shown.stdout and f"running, pid {run.pid}" in shown.stdout
    assert token[:8] in shown.stdout and token not in shown.stdout
    doc = json.loads(kata("state", "show", "--state-file", str(state), "--format", "json").stdout)
    assert doc["external_system_id"] == ext_id and doc["token_length"] == len(token)

    refused = kata("state", "reset", "--state-file", str(state))
    assert refused.returncode == 75, refused.stderr
    assert str(run.pid) in refused.stderr and "stop that run first" in refused.stderr
    assert json.loads(state.read_text())["token"]  # untouched

    run.send(15)
    assert run.wait(10) == 0
    reset = kata("state", "reset", "--state-file", str(state))
    print(reset.stderr)
    assert reset.returncode == 0, reset.stderr
    assert not state.exists()
    backups = sorted(p.name for p in tmp_path.glob("state.json*.bak"))
    assert any(name.startswith("state.json.2") for name in backups), backups
    backup = next(p for p in tmp_path.glob("state.json.2*.bak"))
    assert json.loads(backup.read_text())["token"]

    again = runs.start(args)
    again.wait_event("subscription_new", timeout=20)
    again.wait_lines(20, timeout=20)  # a new subscription starts at the oldest event again
    assert len(emu.status()["subscriptions"]) == 2


@pytest.mark.timeout(60)
def test_state_show_before_the_first_commit_says_a_run_is_going(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    import socket

    emu = make_emulator()
    state = tmp_path / "state.json"
    # A port nothing listens on: the run holds the lock and retries, and commits nothing.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"https://127.0.0.1:{closed.getsockname()[1]}"
    args = [url if a == emu.url else a for a in run_args(emu, ext_id, client_cert, state)]
    run = runs.start(args)
    try:
        run.wait_event("retry", timeout=20)
        assert not state.exists()
        shown = kata("state", "show", "--state-file", str(state))
        print(shown.stderr)
        assert shown.returncode == 66 and shown.stdout == ""
        assert f"a run (pid {run.pid}) holds its lock and has not committed a token yet" in shown.stderr
        assert str(state) in shown.stderr
    finally:
        run.send(15)
        assert run.wait(10) == 0
        closed.close()
    # With the run gone, the plain message: no run has committed there.
    after = kata("state", "show", "--state-file", str(state))
    assert after.returncode == 66 and "no run has committed there yet" in after.stderr
    assert "holds its lock" not in after.stderr
