"""Acceptance: several Central Node addresses are tried in turn when one cannot be reached."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from typing import Iterator

import pytest

from run_helpers import assert_exact_events, client_args, run_args


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _dead_address(kind: str) -> Iterator[str]:
    """A first address that cannot serve: nobody listening, a TLS end with nothing behind it
    (connections accepted, then closed: a load balancer with no healthy node), or a plain-HTTP port."""
    if kind == "closed port":
        yield f"https://127.0.0.1:{_closed_port()}"
        return
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                if kind == "plain HTTP":
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        conn.recv(4096)
                        conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["closed port", "TLS end with nothing behind", "plain HTTP"])
def test_a_dead_first_address_falls_over_to_the_next_and_delivers_everything(
    kind, make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=300)
    cert = make_client_cert("urls")
    args = run_args(
        emu, ext_id, cert, tmp_path / "state.json", "--once", "--max-events", "100", "--log-level", "debug"
    )
    with _dead_address(kind) as dead:
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
    args = client_args([first, second], ext_id, cert, state) + ["--stats-interval", "0"]
    run = runs.start(args)
    retry = run.wait_event("retry", timeout=30)
    assert first in retry["message"] and second in retry["message"], retry
    run.send(signal.SIGTERM)
    assert run.wait() == 0
    run.assert_no_traceback()
