"""``--ack auto`` on the stdins shippers really give, and ``--ack none`` into a pipe and a regular file.

Each shipper but rsyslog gives the child a stdin that will never speak: Vector /dev/null, Fluentd a
pipe at EOF, syslog-ng /dev/null opened write-only, a terminal when run by hand, or none at all.
``auto`` must see that at once and choose none; only a pipe that says START means ack mode. With
``--ack none`` the token follows what the reader took out of the pipe, or what reached the disk.
"""

from __future__ import annotations

import array
import fcntl
import os
import pty
import signal
import subprocess
import termios
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from ack_helpers import (
    ImprogConsumer,
    TokenMap,
    clean_env,
    events_named,
    read_logs,
    run_argv,
    seq_of,
    state_token,
)
from emulator_helpers import ClientCert
from kata_events.emulator import Emulator


def _log_time(record: Dict[str, Any]) -> float:
    return datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def wait_for_event(stderr: Path, name: str, timeout: float = 15.0) -> Optional[Dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stderr.exists():
            found = events_named(read_logs_tolerant(stderr), name)
            if found:
                return found[0]
        time.sleep(0.02)
    return None


def read_logs_tolerant(stderr: Path) -> List[Dict[str, Any]]:
    """The log lines written so far (the last one may still be incomplete)."""
    data = stderr.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    tmp = stderr.with_suffix(".complete")
    tmp.write_bytes(complete)
    return read_logs(tmp)


def _stdin_tty() -> Dict[str, Any]:
    parent, child = pty.openpty()
    return {"stdin": child, "close": [parent, child]}


def _stdin_devnull() -> Dict[str, Any]:
    fd = os.open(os.devnull, os.O_RDONLY)
    return {"stdin": fd, "close": [fd]}


def _stdin_write_only_devnull() -> Dict[str, Any]:
    # syslog-ng's program() destination: /dev/null opened for writing as the child's stdin.
    fd = os.open(os.devnull, os.O_WRONLY)
    return {"stdin": fd, "close": [fd]}


def _stdin_pipe_at_eof() -> Dict[str, Any]:
    r, w = os.pipe()
    os.close(w)
    return {"stdin": r, "close": [r]}


def _stdin_closed() -> Dict[str, Any]:
    return {"stdin": None, "preexec_fn": lambda: os.close(0), "close": []}


def _stdin_silent_pipe() -> Dict[str, Any]:
    r, w = os.pipe()
    return {"stdin": r, "close": [r, w]}


def _stdin_not_start() -> Dict[str, Any]:
    r, w = os.pipe()
    os.write(w, b"hello\n")
    return {"stdin": r, "close": [r, w]}


def _stdin_start() -> Dict[str, Any]:
    r, w = os.pipe()
    os.write(w, b"START\n")
    return {"stdin": r, "close": [r, w]}


STDINS = {
    "tty": (_stdin_tty, "none", "terminal"),
    "dev-null": (_stdin_devnull, "none", "/dev/null"),
    "write-only-dev-null": (_stdin_write_only_devnull, "none", "/dev/null"),
    "pipe-at-eof": (_stdin_pipe_at_eof, "none", "end of file"),
    "closed": (_stdin_closed, "none", "closed"),
    "pipe-says-start": (_stdin_start, "lines", "START"),
    # A pipe that never speaks: none, after the grace period (the only kind that waits for it).
    "silent-pipe": (_stdin_silent_pipe, "none", "said nothing"),
    "pipe-says-something-else": (_stdin_not_start, "none", "not START"),
}


@pytest.mark.parametrize("kind", list(STDINS))
def test_auto_mode_decides_from_stdin_without_delay(
    kind: str,
    make_emulator: Callable[..., Emulator],
    client_cert: ClientCert,
    ext_id: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    make_stdin, mode, reason_part = STDINS[kind]
    emulator = make_emulator(backlog=5, event_bytes=300)
    stderr = tmp_path / "stderr.log"
    setup = make_stdin()
    argv = run_argv(emulator, client_cert, ext_id, tmp_path / "state.json", "--ack", "auto")
    try:
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=setup["stdin"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=clean_env(),
                preexec_fn=setup.get("preexec_fn"),
            )
        try:
            chosen = wait_for_event(stderr, "mode")
            # Signal handlers are in place once the loop runs (it announces the new subscription).
            wait_for_event(stderr, "subscription_new")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    finally:
        for fd in setup["close"]:
            os.close(fd)
    assert chosen is not None, stderr.read_text()
    started = events_named(read_logs(stderr), "start")[0]
    delay = _log_time(chosen) - _log_time(started)
    record_property("start_to_mode_seconds", delay)
    assert chosen["mode"] == mode, chosen
    # The reason says how the choice was made: only the silent pipe's waited for the grace
    # period; that the others do not wait is timed in test_acks_unit with a grace of a minute.
    assert reason_part.lower() in chosen["reason"].lower(), chosen
    assert proc.returncode == 0, stderr.read_text()


def _wait_reading(head: subprocess.Popen, write_end: int, after: int, timeout: float = 30.0) -> int:
    """Wait until ``head`` has read past ``after`` bytes (its rchar), left the pipe empty and
    blocks reading it again, or has exited; its rchar then (-1 once it exited)."""
    deadline = time.monotonic() + timeout
    while head.poll() is None:
        try:
            rchar = int(Path(f"/proc/{head.pid}/io").read_text().split("rchar:")[1].split()[0])
            reading = "pipe" in Path(f"/proc/{head.pid}/wchan").read_text()
        except (OSError, IndexError):  # exiting
            rchar, reading = after, False
        unread = array.array("i", [0])
        fcntl.ioctl(write_end, termios.FIONREAD, unread, True)
        if rchar > after and reading and unread[0] == 0:
            return rchar
        assert time.monotonic() < deadline, f"head did not take the line (rchar {rchar}, {unread[0]} unread)"
        time.sleep(0.01)
    return -1


def test_ack_none_into_head_resumes_at_or_before_the_first_line_head_did_not_print(
    make_emulator: Callable[..., Emulator],
    client_cert: ClientCert,
    ext_id: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    emulator = make_emulator(backlog=0, rate=0, event_bytes=300)
    state = tmp_path / "state.json"
    argv = run_argv(emulator, client_cert, ext_id, state, "--ack", "none", max_events=1, max_timeout=5)
    out = tmp_path / "head.out"
    # `kata-events | head -n 10`, with the test holding a second write end of the pipe: it adds no
    # reader (the run still sees head go away) and tells how much head has left in the pipe.
    read_end, write_end = os.pipe()
    with open(tmp_path / "first.log", "wb") as log, open(out, "wb") as printed_to:
        first = subprocess.Popen(argv, stdout=write_end, stderr=log, env=clean_env())
        head = subprocess.Popen(["head", "-n", "10"], stdin=read_end, stdout=printed_to)
    os.close(read_end)
    try:
        # One event at a time, each added once head has taken the last line and waits for the next:
        # head reads every line alone, so the lines it printed are exactly the lines it took. The
        # eleventh is added after head took its tenth: it finds head leaving or gone.
        taken = _wait_reading(head, write_end, after=-1)
        for _ in range(11):
            emulator.add_events(1)
            taken = _wait_reading(head, write_end, after=taken)
        head_status = head.wait(60)
        first.wait(60)
    finally:
        os.close(write_end)
        for proc in (first, head):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert head_status == 0
    printed = [seq_of(line) for line in out.read_bytes().splitlines()]
    assert printed == list(range(1, 11))
    gone = events_named(read_logs(tmp_path / "first.log"), "consumer_gone")
    assert gone, "the end of head must be noticed as the reader going away"

    second = ImprogConsumer(argv, tmp_path / "second.log", ack="none", say_start=False).start()
    try:
        assert second.wait_lines(1, 30)
    finally:
        second.kill()
    resumed_at = second.seqs[0]
    record_property("resumed_at", resumed_at)
    assert resumed_at <= 11, f"events {list(range(11, resumed_at))} were never printed by anyone"
    assert resumed_at >= 2, "at least the first page head read was committed"


def test_ack_none_into_a_file_commits_only_what_is_in_the_file(
    make_emulator: Callable[..., Emulator], client_cert: ClientCert, ext_id: str, tmp_path: Path
) -> None:
    total, page = 6000, 50
    emulator = make_emulator(backlog=total, event_bytes=300)
    tokens = TokenMap(emulator)
    state, out = tmp_path / "state.json", tmp_path / "events.ndjson"
    argv = run_argv(emulator, client_cert, ext_id, state, "--ack", "none", max_events=page)
    seen: List[tuple] = []

    def run_once(kill_after_commits: Optional[int]) -> int:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with open(tmp_path / "stderr.log", "ab") as err:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=err, env=clean_env()
                )
        finally:
            os.close(fd)
        last = None
        commits = 0
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            tokens.refresh()
            token = state_token(state)
            if token is not None and token != last:
                # Read the token first, then the file: the file can only have grown since.
                lines = out.read_bytes().count(b"\n")
                seen.append((tokens.position(token) - 1, lines))
                last, commits = token, commits + 1
                if kill_after_commits is not None and commits >= kill_after_commits:
                    proc.kill()
                    break
                if tokens.position(token) == total + 1:
                    proc.terminate()
                    break
            time.sleep(0.002)
        return proc.wait(timeout=10)

    assert run_once(kill_after_commits=8) == -signal.SIGKILL
    assert run_once(kill_after_commits=None) == 0
    ahead = [(covered, lines) for covered, lines in seen if covered > lines]
    assert not ahead, f"committed past the lines in the file (covered, in file): {ahead[:5]}"
    seqs = [seq_of(line) for line in out.read_bytes().splitlines()]
    assert sorted(set(seqs)) == list(range(1, total + 1)), "an event is missing from the file"
    assert len(seqs) - total <= 2 * page, f"{len(seqs) - total} lines written twice"


def test_a_closed_stdout_ends_the_run_and_commits_nothing(
    make_emulator: Callable[..., Emulator], client_cert: ClientCert, ext_id: str, tmp_path: Path
) -> None:
    # Were fd 1 left free, the state lock file would take it and swallow the events as "fsynced".
    emulator = make_emulator(backlog=500, event_bytes=300)
    state, stderr = tmp_path / "state.json", tmp_path / "stderr.log"
    argv = run_argv(emulator, client_cert, ext_id, state)
    with open(stderr, "wb") as err:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stderr=err,
            env=clean_env(),
            preexec_fn=lambda: os.close(1),
            timeout=30,
        )
    assert proc.returncode == 0
    assert events_named(read_logs(stderr), "consumer_gone")
    assert state_token(state) is None, "events were counted delivered into some other file"
