"""Acceptance: a server that trickles its answer is abandoned after a bounded time and retried.

Per-read timeouts do not bound a request whose server sends a byte every few seconds. Here the real
process meets, on loopback: a raw-socket server in the test that accepts TCP and then feeds the TLS
handshake one byte every second (then turns into a plain TCP proxy to the emulator), and the
emulator's ``trickle_headers`` / ``trickle_body`` faults. A request whose headers or body trickle is
abandoned after ``max_timeout + 10 + 5`` s (a trickling handshake already fails at the 10 s connect
timeout: CPython bounds a TLS handshake as a whole), retried, and every event still arrives; SIGTERM
during a trickle stops the process without waiting for the trickle.
"""

from __future__ import annotations

import signal
import time
from typing import List

import pytest

from proxy_helpers import LoopbackProxy
from run_helpers import assert_exact_events, run_args

EVENTS = 60
#: --max-timeout 1 (as --once uses): the answer, and each part of the body, get 1 + 10 + 5 s.
LIMIT = 16


@pytest.fixture
def trickle_proxy():
    made: List[LoopbackProxy] = []

    def make(emu, **kwargs) -> LoopbackProxy:
        kwargs.setdefault("trickled", 1)
        proxy = LoopbackProxy(("127.0.0.1", int(emu.url.rsplit(":", 1)[1])), **kwargs)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def _args(emu, ext_id, cert, state, url, *extra):
    args = run_args(emu, ext_id, cert, state, *extra)
    args[args.index(emu.url)] = url
    return args


def _assert_abandoned_then_all_delivered(run, emu, stage: str, since: float) -> None:
    retry = run.wait_event("retry", timeout=LIMIT + 10)
    waited = retry["_at"] - since
    print(f"{stage}: abandoned after {waited:.1f} s: {retry['message']}")
    if stage == "handshake":
        # CPython bounds a whole TLS handshake by the socket's timeout (the 10 s connect timeout),
        # trickle or not; the overall deadline is the backstop.
        assert "timed out" in retry["message"] or "abandoned" in retry["message"], retry["message"]
        assert waited <= LIMIT + 6, waited
    else:
        assert f"no {stage} within {LIMIT} s" in retry["message"], retry["message"]
        assert LIMIT - 1 <= waited <= LIMIT + 6, waited
    assert run.wait(60) == 0, run.stderr_text[-3000:]
    run.assert_no_traceback()
    assert not run.other_stderr.strip(), run.other_stderr
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(90)
def test_a_tls_handshake_trickling_a_byte_a_second_is_abandoned_and_retried(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, trickle_proxy
):
    emu = make_emulator(backlog=EVENTS)
    proxy = trickle_proxy(emu)
    args = _args(emu, ext_id, make_client_cert("trickle-tls"), tmp_path / "s.json", proxy.url, "--once")
    run = runs.start(args)
    _assert_abandoned_then_all_delivered(run, emu, "handshake", run.started)
    assert proxy.connections >= 2


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "fault, stage", [("trickle_headers", "answer"), ("trickle_body", "part of the body")]
)
def test_headers_or_a_body_trickling_a_byte_a_second_are_abandoned_and_retried(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, fault, stage
):
    emu = make_emulator(backlog=EVENTS)
    emu.inject(fault, after=1, delay=1)  # the first page is fine, the second request trickles
    args = run_args(
        emu,
        ext_id,
        make_client_cert(fault),
        tmp_path / "s.json",
        "--once",
        "--max-events",
        "30",
        "--log-level",
        "debug",
    )
    run = runs.start(args)
    first = run.wait_event("page", timeout=15)
    _assert_abandoned_then_all_delivered(run, emu, stage, first["_at"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["handshake", "body"])
def test_sigterm_during_a_trickle_stops_without_waiting_for_it(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, trickle_proxy, where
):
    emu = make_emulator(backlog=EVENTS)
    cert = make_client_cert(f"trickle-term-{where}")
    if where == "handshake":
        proxy = trickle_proxy(emu)
        args = _args(emu, ext_id, cert, tmp_path / "s.json", proxy.url)
    else:
        emu.inject("trickle_body", delay=1)
        args = run_args(emu, ext_id, cert, tmp_path / "s.json")
    run = runs.start(args)
    run.wait_event("subscription_new", timeout=15)
    time.sleep(3)  # well inside the trickle
    assert run.returncode is None
    sent = time.monotonic()
    run.send(signal.SIGTERM)
    assert run.wait(30) == 0, run.stderr_text[-3000:]
    took = run.exited_at - sent
    print(f"SIGTERM during a {where} trickle: exit after {took * 1000:.0f} ms")
    assert took < 10  # not the trickle's pace (a byte a second): within a second as a rule
    run.assert_no_traceback()


@pytest.mark.timeout(90)
def test_a_body_trickling_while_a_retry_skips_what_was_written_is_abandoned_too(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    """A page cut mid-body is asked again, and its first events, already written, are skipped: a
    trickle then must be abandoned like any other, not wait for ever inside the skipping."""
    emu = make_emulator(backlog=EVENTS)
    # The first page makes the subscription; of the second, about half arrives before the
    # body ends (a truncated answer); the retry's body never ends.
    emu.inject("truncated", after=1)
    emu.inject("trickle_body", delay=1)
    args = run_args(
        emu, ext_id, make_client_cert("trickle-skip"), tmp_path / "s.json", "--once", "--max-events", "30"
    )
    run = runs.start(args)
    abandoned = run.wait_event(
        "retry", timeout=LIMIT + 20, where=lambda r: "part of the body" in r.get("message", "")
    )
    print(f"trickle while skipping: {abandoned['message']}")
    assert run.wait(60) == 0, run.stderr_text[-3000:]
    assert run.events("resume"), "the retry did not skip what was written"
    run.assert_no_traceback()
    assert_exact_events(emu, run.lines(), 1, EVENTS)
