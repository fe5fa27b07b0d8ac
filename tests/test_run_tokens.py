"""Acceptance: a continuation token is checked before it is saved, and a refused one never wedges.

A page whose token no server would send (2 MiB, or holding a quote, a space, a control character)
is not committed: ``bad_response`` names the problem and the page is fetched again with the last
good token. A token the server refuses mid-run (414, 400) takes the ``subscription_lost`` path with
the real cause; at the first request of a run a 400 is a ``fatal`` naming both possible causes. A
saved token that fails the check starts a new subscription instead of failing every request.
"""

from __future__ import annotations

import json

import pytest

from run_helpers import assert_exact_events, run_args, seq_of

EVENTS = 100
PAGE = "30"


def _once(runs, emu, cert, ext_id, state, timeout=45):
    run = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--max-events", PAGE), timeout=timeout)
    run.assert_no_traceback()
    assert not run.other_stderr.strip(), run.other_stderr
    return run


def _saved_token(state) -> str:
    return json.loads(state.read_bytes())["token"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault, says", [("huge_token", "2097152 characters"), ("odd_token", "position 3")])
def test_a_page_with_an_impossible_token_is_not_committed_and_is_fetched_again(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, fault, says
):
    emu = make_emulator(backlog=EVENTS)
    emu.inject(fault, after=1)
    state = tmp_path / "s.json"
    run = _once(runs, emu, make_client_cert(fault), ext_id, state)
    assert run.returncode == 0, run.stderr_text[-3000:]
    bad = run.wait_event("bad_response", timeout=1)
    assert "continuationToken is not one a server would send" in bad["message"] and says in bad["message"]
    assert len(bad["excerpt"]) < 100
    assert not run.events("subscription_lost") and not run.events("retry")
    seqs = [seq_of(line) for line in run.lines()]
    # The failed page's events were written before its end showed the token; the retry asks with
    # the same token and skips them (their digest matches): each event arrives once.
    assert seqs == list(range(1, EVENTS + 1))
    assert run.events("resume") and run.events("resume")[0]["events"] == int(PAGE)
    token = _saved_token(state)
    assert len(token) < 100 and '"' not in token


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["414", "400"])
def test_a_token_refused_mid_run_starts_a_new_subscription_naming_the_cause(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, fault
):
    emu = make_emulator(backlog=EVENTS)
    emu.inject(fault, after=1)  # the second request, the first one to carry a token
    run = _once(runs, emu, make_client_cert(f"refused-{fault}"), ext_id, tmp_path / "s.json")
    assert run.returncode == 0, run.stderr_text[-3000:]
    lost = run.wait_event("subscription_lost", timeout=1)
    assert f"HTTP {fault}" in lost["message"] and "refused our continuation token" in lost["message"]
    assert lost["status"] == int(fault)
    assert "TLS" not in lost["message"]
    # The new subscription starts at the oldest event the server still has: nothing is lost.
    assert set(seq_of(line) for line in run.lines()) == set(range(1, EVENTS + 1))


@pytest.mark.timeout(60)
def test_a_400_at_the_first_request_with_a_saved_token_is_fatal_naming_both_causes(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS)
    cert = make_client_cert("refused-first")
    state = tmp_path / "s.json"
    first = _once(runs, emu, cert, ext_id, state)
    assert first.returncode == 0
    saved = state.read_bytes()
    emu.inject("400")
    run = _once(runs, emu, cert, ext_id, state)
    assert run.returncode == 78, run.stderr_text[-3000:]
    fatal = run.wait_event("fatal", timeout=1)
    assert "HTTP 400" in fatal["message"] and "continuation token" in fatal["message"]
    assert "move the state file" in fatal["message"] and "check url" in fatal["message"]
    assert state.read_bytes() == saved, "the saved token was dropped on an ambiguous 400"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("token", ["A" * 100_000, 'has "quotes" and spaces'])
def test_a_saved_token_no_server_would_take_starts_a_new_subscription(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, token
):
    emu = make_emulator(backlog=EVENTS)
    state = tmp_path / "s.json"
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "token": token,
                "url": emu.url,
                "external_system_id": ext_id,
                "filter": "",
                "saved_at": "2026-01-01T00:00:00Z",
            }
        )
    )
    state.chmod(0o600)
    run = _once(runs, emu, make_client_cert("saved-bad"), ext_id, state)
    assert run.returncode == 0, run.stderr_text[-3000:]
    said = run.wait_event("state", timeout=1, where=lambda r: "cannot be used" in r["message"])
    assert said["level"] == "warning" and token[:20] not in said["message"]
    assert not run.events("retry") and not run.events("subscription_lost")
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert _saved_token(state) != token
