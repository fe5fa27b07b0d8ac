"""Acceptance: several Central Node addresses are tried in turn when one cannot be reached."""

from __future__ import annotations

import signal
import socket

import pytest

from run_helpers import assert_exact_events, run_args


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(90)
def test_a_dead_first_address_falls_over_to_the_next_and_delivers_everything(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=300)
    cert = make_client_cert("urls")
    dead = f"https://127.0.0.1:{_closed_port()}"
    args = run_args(emu, ext_id, cert, tmp_path / "state.json", "--once", "--max-events", "100")
    # The dead address first: every request must fail over to the emulator, with no retry logged.
    url_at = args.index("--url")
    args[url_at : url_at + 2] = ["--url", dead, "--url", emu.url]
    run = runs.complete(args, timeout=60)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, 300)
    assert not run.events("retry"), "a failed-over request is not a retry"
    assert {p["url"] for p in run.events("page")} == {emu.url}


@pytest.mark.timeout(90)
def test_when_every_address_is_down_it_retries_with_backoff_and_names_them(
    make_client_cert, ext_id, runs, tmp_path
):
    cert = make_client_cert("urls-down")
    first, second = (f"https://127.0.0.1:{_closed_port()}" for _ in range(2))
    state = tmp_path / "state.json"
    args = [
        "--url", first, "--url", second, "--external-system-id", ext_id,
        "--cert", str(cert.cert_file), "--key", str(cert.key_file), "--state-file", str(state),
        "--stats-interval", "0",
    ]
    run = runs.start(args)
    retry = run.wait_event("retry", timeout=30)
    assert first in retry["message"] and second in retry["message"], retry
    run.send(signal.SIGTERM)
    assert run.wait() == 0
    run.assert_no_traceback()
