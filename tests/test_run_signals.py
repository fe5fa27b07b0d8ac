"""Acceptance: SIGTERM (SIGINT, SIGHUP) ends an idle 300 s long poll within a second (the median of
five stops: one stop on a loaded machine says little), and a reader that goes away (`| head`) ends
the process quietly without committing what it did not take.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time

import pytest

from determinism import median_of_runs
from run_helpers import assert_exact_events, clean_env, command, run_args


def _wait_for_requests(emu, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while emu.requests_served < count:
        assert time.monotonic() < deadline, f"the emulator got {emu.requests_served} requests, not {count}"
        time.sleep(0.02)


def _stop_during_an_idle_long_poll(emu, cert, ext_id, runs, state, sig) -> float:
    """Seconds from ``sig`` to the exit of a run idle in a 300 s long poll; the run's checks."""
    run = runs.start(run_args(emu, ext_id, cert, state, "--max-timeout", "300"))
    served = emu.requests_served
    _wait_for_requests(emu, served + 1)  # the first page (empty): the long poll comes next
    time.sleep(0.5)  # well inside the long poll: the server holds it for 300 s
    assert run.returncode is None
    sent = time.monotonic()
    run.send(sig)
    code = run.wait(30)
    took = time.monotonic() - sent
    print(f"{signal.Signals(sig).name} during a 300 s long poll: exit {code} after {took:.3f} s")
    assert code == 0, run.stderr_text[-3000:]
    assert run.output == b""
    run.assert_no_traceback()
    stop = run.wait_event("stop", timeout=10)
    assert signal.Signals(sig).name in stop["message"]
    return took


@pytest.mark.timeout(90)
# SIGHUP too: a closed terminal or a supervisor's stop must not kill the run without its stop line.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_during_an_idle_300s_long_poll_exits_0_with_its_stop_line(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, sig
):
    emu = make_emulator(default_max_timeout=300)
    cert = make_client_cert("sigterm")
    took = _stop_during_an_idle_long_poll(emu, cert, ext_id, runs, tmp_path / "s.json", sig)
    assert took < 30  # not the 300 s of the long poll: how soon is the next test's question


@pytest.mark.timeout(120)
def test_sigterm_ends_an_idle_long_poll_within_a_second_as_a_median(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(default_max_timeout=300)
    cert = make_client_cert("sigterm-median")
    state = tmp_path / "s.json"
    median = median_of_runs(
        lambda: _stop_during_an_idle_long_poll(emu, cert, ext_id, runs, state, signal.SIGTERM)
    )
    print(f"SIGTERM during a 300 s long poll: median {median:.3f} s to exit over 5 runs")
    assert median < 1.0


def _stop_while_blocked_writing(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    """SIGTERM while the process is blocked writing to a full pipe whose reader then goes on."""
    emu = make_emulator(backlog=20000)
    cert = make_client_cert("stalled")
    args = run_args(emu, ext_id, cert, tmp_path / "state.json", "--max-events", "5000")
    run = runs.start(args, hold_stdout=True)
    deadline = time.monotonic() + 20
    while run.unread_stdout() < 65536:  # the pipe is full: the process is blocked in a write
        assert time.monotonic() < deadline, "the stdout pipe never filled up"
        time.sleep(0.05)
    time.sleep(0.3)
    sent = time.monotonic()
    run.send(signal.SIGTERM)
    run.release_stdout()  # the consumer is slow, not dead: it goes on reading
    code = run.wait(10)
    took = time.monotonic() - sent
    print(f"SIGTERM while blocked writing: exit {code} after {took:.3f} s")
    assert code == 0, run.stderr_text[-3000:]
    assert took < 10  # the stop did not wait for the reader to drain the page
    run.assert_no_traceback()
    return emu, run, args


@pytest.mark.timeout(60)
def test_sigterm_while_blocked_writing_exits_within_a_second_and_commits_nothing_untaken(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu, run, args = _stop_while_blocked_writing(make_emulator, make_client_cert, ext_id, runs, tmp_path)
    lines = run.lines(allow_partial_tail=True)
    assert_exact_events(emu, lines, 1, len(lines))
    resumed = runs.complete(args + ["--once"], timeout=60)
    assert resumed.returncode == 0, resumed.stderr_text[-3000:]
    assert resumed.seqs()[0] <= len(lines) + 1, "events were skipped"


@pytest.mark.timeout(60)
def test_sigterm_while_blocked_writing_leaves_no_partial_line(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    _, run, _ = _stop_while_blocked_writing(make_emulator, make_client_cert, ext_id, runs, tmp_path)
    data = run.output
    assert data.endswith(b"\n"), f"stdout ends with a partial line: ...{data[-80:]!r}"


@pytest.mark.timeout(60)
def test_head_closing_the_pipe_ends_quietly_and_the_next_run_resumes_after_the_tenth(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator()
    cert = make_client_cert("head")
    state = tmp_path / "state.json"
    args = run_args(emu, ext_id, cert, state, "--max-events", "1", "--max-timeout", "5")
    rc_file = tmp_path / "rc"
    script = f"{{ {shlex.join(command(args))}; echo $? > {shlex.quote(str(rc_file))}; }} | head -n 10"
    stop_trickle = threading.Event()

    def trickle() -> None:
        # Pages of one event, one event at a time once the process asks, slower than a page's round
        # trip: head never reads bytes past the tenth line that the process would count as taken.
        while emu.requests_served < 1 and not stop_trickle.wait(0.02):
            pass
        while not stop_trickle.wait(0.15):
            emu.add_events(1)

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        done = subprocess.run(
            ["sh", "-c", script], cwd=tmp_path, env=clean_env(), capture_output=True, timeout=40
        )
    finally:
        stop_trickle.set()
        feeder.join()
    deadline = time.monotonic() + 10
    while not (rc_file.exists() and rc_file.read_text().strip()):
        assert time.monotonic() < deadline, "kata-events run did not exit after head closed the pipe"
        time.sleep(0.05)
    stderr = done.stderr.decode("utf-8", "replace")
    assert int(rc_file.read_text()) == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert '"consumer_gone"' in stderr, stderr[-3000:]
    head_lines = done.stdout.split(b"\n")[:-1]
    assert_exact_events(emu, head_lines, 1, 10)

    resumed = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--max-events", "1000"), timeout=30)
    assert resumed.returncode == 0, resumed.stderr_text[-3000:]
    seqs = resumed.seqs()
    assert seqs, "the following run printed nothing"
    assert seqs[0] <= 11, f"the following run starts at event {seqs[0]}: events after the 10th were skipped"
    last = emu.next_seq - 1
    assert_exact_events(emu, resumed.lines(), seqs[0], last)
    print(f"after head -n 10 the next run starts at event {seqs[0]}")
