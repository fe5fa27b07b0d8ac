"""Acceptance: each fault the Central Node (emulator) can show gives its log event and behaviour,
and every event still arrives; a failed page is never committed, so only its events may repeat.
"""

from __future__ import annotations

import time
from typing import List

import pytest

from kata_events.config.urls import format_fingerprint, normalize_fingerprint
from run_helpers import assert_exact_events, run_args, seq_of

EVENTS = 100
PAGE = 30


def _assert_all_with_one_replayed_page(seqs: List[int], total: int, page: int) -> int:
    """``seqs`` is 1..k, then a restart at the first event of a page not after k+1, then on to ``total``;
    returns how many events were sent twice.
    """
    restarts = [i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1]
    assert len(restarts) <= 1, f"more than one jump in the output: {restarts}"
    if restarts:
        cut = restarts[0]
        before, after = seqs[:cut], seqs[cut:]
        assert before == list(range(1, len(before) + 1))
        assert after[0] <= before[-1] + 1, "events were skipped"
        assert (after[0] - 1) % page == 0, f"the replay starts at {after[0]}, not at a page's first event"
        assert before[-1] - after[0] + 1 <= page, "more than the failed page was sent again"
        assert after == list(range(after[0], total + 1))
        return before[-1] - after[0] + 1
    assert seqs == list(range(1, total + 1))
    return 0


def _run_with_fault(make_emulator, make_client_cert, ext_id, runs, tmp_path, fault: str, **options):
    emu = make_emulator(backlog=EVENTS)
    emu.inject(fault, after=1, **options)  # the second request: a page is already committed
    cert = make_client_cert(f"fault-{fault}")
    args = run_args(
        emu, ext_id, cert, tmp_path / "s.json", "--once", "--max-events", str(PAGE), "--log-level", "debug"
    )
    run = runs.complete(args, timeout=45)
    assert run.returncode == 0, run.stderr_text[-3000:]
    run.assert_no_traceback()
    assert not run.other_stderr.strip(), run.other_stderr  # JSON log lines only
    return emu, run


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["500", "502", "503"])
def test_server_errors_are_retried_and_every_event_arrives(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, fault
):
    emu, run = _run_with_fault(make_emulator, make_client_cert, ext_id, runs, tmp_path, fault)
    retry = run.wait_event("retry", timeout=1)
    assert f"HTTP {fault}" in retry["message"]
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(60)
def test_429_waits_at_least_retry_after(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu, run = _run_with_fault(make_emulator, make_client_cert, ext_id, runs, tmp_path, "429", retry_after=2)
    retry = run.wait_event("retry", timeout=1)
    assert "HTTP 429" in retry["message"]
    assert retry["retry_after"] == 2 and retry["delay"] >= 2
    after_retry = [r for r in run.events("page") if r["_at"] > retry["_at"]]
    assert after_retry and after_retry[0]["_at"] - retry["_at"] >= 1.9
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(60)
def test_a_fractional_retry_after_is_honoured(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu, run = _run_with_fault(
        make_emulator, make_client_cert, ext_id, runs, tmp_path, "429", retry_after=1.5
    )
    retry = run.wait_event("retry", timeout=1)
    assert retry["retry_after"] == 1.5 and retry["delay"] >= 1.5
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault, expected",
    [
        ("drop", {"retry", "bad_response"}),
        ("truncated", {"bad_response", "retry"}),
        ("no_events", {"bad_response"}),
        ("no_token", {"bad_response"}),
    ],
)
def test_broken_bodies_are_not_committed_and_the_retry_skips_what_was_written(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, fault, expected
):
    emu, run = _run_with_fault(make_emulator, make_client_cert, ext_id, runs, tmp_path, fault)
    said = {r["event"] for r in run.logs} & {"retry", "bad_response"}
    assert said and said <= expected, run.stderr_text[-3000:]
    lines = run.lines()
    for line in lines:
        assert line == emu.event_bytes(seq_of(line))
    seqs = [seq_of(line) for line in lines]
    replayed = _assert_all_with_one_replayed_page(seqs, EVENTS, PAGE)
    print(f"{fault}: {said}, {replayed} events of the failed page sent again")
    # The events of the failed page written before the failure are not written again: the retry
    # asks with the same token and skips them once their digest matches.
    assert replayed == 0
    if fault in ("truncated", "no_token"):
        skipped = run.events("resume")
        assert skipped and skipped[0]["events"] > 0, "the failed page's written events were not skipped"


@pytest.mark.timeout(60)
def test_slow_answer_just_works(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu, run = _run_with_fault(make_emulator, make_client_cert, ext_id, runs, tmp_path, "slow", delay=2)
    assert not run.events("retry") and not run.events("bad_response")
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(60)
def test_hanging_server_times_out_after_max_timeout_plus_margin_then_retries(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS)
    emu.inject("hang", after=1)
    cert = make_client_cert("hang")
    args = run_args(
        emu,
        ext_id,
        cert,
        tmp_path / "s.json",
        "--max-events",
        str(PAGE),
        "--max-timeout",
        "1",
        "--log-level",
        "debug",
    )
    run = runs.start(args)
    first_page = run.wait_event("page", timeout=20)
    retry = run.wait_event("retry", timeout=20)
    waited = retry["_at"] - first_page["_at"]
    print(f"hang: retry after {waited:.1f} s")
    assert "did not answer within 11 s" in retry["message"]
    assert 10.5 <= waited <= 14
    run.wait_lines(EVENTS, timeout=15)
    run.send(15)
    assert run.wait(10) == 0
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(90)
def test_401_names_the_system_and_certificate_and_resumes_once_approved(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS, approve="manual")
    cert = make_client_cert("unauthorized")
    emu.approve(ext_id, cert.fingerprint)
    emu.inject("401", after=1)  # revokes the approval, as an administrator removing it would
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--max-events", str(PAGE))
    run = runs.start(args)
    told = run.wait_event("unauthorized", timeout=20)
    assert told["external_system_id"] == ext_id
    fp = normalize_fingerprint(cert.fingerprint)
    assert normalize_fingerprint(told["fingerprint"]) == fp
    assert ext_id in told["message"] and format_fingerprint(fp) in told["message"]
    assert "every 5 s for 5 min, then every 30 s" in told["message"]
    assert not emu.is_approved(ext_id, cert.fingerprint)
    emu.approve(ext_id, cert.fingerprint)
    approved = run.wait_event("approved", timeout=45)
    waited = approved["_at"] - told["_at"]
    print(f"401: resumed {waited:.1f} s after the unauthorized message")
    assert waited <= 12  # retried every 5 s while the approval is fresh
    run.wait_lines(EVENTS, timeout=15)
    run.send(15)
    assert run.wait(10) == 0
    assert_exact_events(emu, run.lines(), 1, EVENTS)


@pytest.mark.timeout(60)
def test_404_starts_a_new_subscription_with_a_warning_and_goes_on(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu, run = _run_with_fault(make_emulator, make_client_cert, ext_id, runs, tmp_path, "404")
    lost = run.wait_event("subscription_lost", timeout=1)
    assert lost["level"].upper() in ("WARNING", "ERROR")
    assert "skipped" in lost["message"]
    # The emulator's new subscription starts at its oldest event: the first page comes again.
    lines = run.lines()
    assert_exact_events(emu, lines[:PAGE], 1, PAGE)
    assert_exact_events(emu, lines[PAGE:], 1, EVENTS)
    assert len(emu.status()["subscriptions"]) == 1


@pytest.mark.timeout(30)
def test_a_filter_the_server_rejects_exits_78(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("badfilter")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--filter", "Ioa.Severity == ")
    started = time.monotonic()
    run = runs.complete(args, timeout=20)
    assert run.returncode == 78, run.stderr_text[-3000:]
    assert time.monotonic() - started < 10
    bad = run.wait_event("bad_request", timeout=1)
    assert bad["filter"] == "Ioa.Severity == "
    assert run.output == b""
    run.assert_no_traceback()
