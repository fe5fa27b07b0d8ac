"""Acceptance: the state file as the real process leaves it: 0600, bound to url, external system id
and filter, locked against a second instance, importing the original script's plain token file, and
a changed filter starting a new subscription with a warning.
"""

from __future__ import annotations

import json
import os

import pytest

from run_helpers import assert_exact_events, run_args

FILTER_A = "EventType != 'nothing-matches-this'"
FILTER_B = "Ioa.Severity != 'nothing-matches-this'"


@pytest.mark.timeout(40)
def test_state_file_is_0600_and_records_url_id_and_filter(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=20)
    cert = make_client_cert("state")
    state = tmp_path / "deeper" / "state.json"
    run = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--filter", FILTER_A), timeout=30)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, 20)
    assert os.stat(state).st_mode & 0o777 == 0o600
    doc = json.loads(state.read_text())
    assert doc["url"].rstrip("/") == emu.url
    assert doc["external_system_id"] == ext_id
    assert doc["filter"] == FILTER_A
    assert isinstance(doc["token"], str) and doc["token"]
    # The lock, the progress record (the first page's progress is noted there too), the status record.
    kept = ("state.json", "state.json.lock", "state.json.progress", "state.json.status")
    leftovers = [p.name for p in state.parent.iterdir() if p.name not in kept]
    assert leftovers == [], "temporary files were left next to the state file"


@pytest.mark.timeout(40)
def test_a_second_instance_on_the_same_state_file_exits_75_naming_the_holder(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=5)
    cert = make_client_cert("lock")
    state = tmp_path / "state.json"
    first = runs.start(run_args(emu, ext_id, cert, state, "--max-timeout", "30"))
    first.wait_lines(5, timeout=20)
    served = emu.requests_served
    second = runs.complete(run_args(emu, ext_id, cert, state, "--max-timeout", "30"), timeout=20)
    assert second.returncode == 75, second.stderr_text[-3000:]
    assert str(first.pid) in second.stderr_text
    assert str(state) in second.stderr_text
    assert second.output == b""
    second.assert_no_traceback()
    assert emu.requests_served <= served + 1  # only the first instance's long poll, if it renewed
    assert first.returncode is None, "the first instance must keep running"
    first.send(15)
    assert first.wait(10) == 0


@pytest.mark.timeout(40)
def test_the_original_scripts_plain_token_file_is_imported(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=30)
    cert = make_client_cert("plain")
    state = tmp_path / "state.json"
    first = runs.complete(run_args(emu, ext_id, cert, state, "--once"), timeout=30)
    assert first.returncode == 0, first.stderr_text[-3000:]
    token = json.loads(state.read_text())["token"]
    plain = tmp_path / "continuation_token.txt"
    plain.write_text(token + "\n")
    emu.add_events(20)
    second = runs.complete(run_args(emu, ext_id, cert, plain, "--once"), timeout=30)
    assert second.returncode == 0, second.stderr_text[-3000:]
    assert_exact_events(emu, second.lines(), 31, 50)
    note = second.wait_event("state", timeout=1)
    assert "plain token file" in note["message"]
    assert not second.events("subscription_new")
    doc = json.loads(plain.read_text())  # rewritten in the new format at the first commit
    assert doc["external_system_id"] == ext_id and doc["token"] != token
    assert os.stat(plain).st_mode & 0o777 == 0o600


@pytest.mark.timeout(40)
def test_a_changed_filter_starts_a_new_subscription_with_a_warning(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("filter")
    state = tmp_path / "state.json"
    first = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--filter", FILTER_A), timeout=30)
    assert first.returncode == 0, first.stderr_text[-3000:]
    assert_exact_events(emu, first.lines(), 1, 10)
    second = runs.complete(run_args(emu, ext_id, cert, state, "--once", "--filter", FILTER_B), timeout=30)
    assert second.returncode == 0, second.stderr_text[-3000:]
    warnings = [
        r for r in second.logs if r.get("level", "").upper() == "WARNING" and "filter" in r["message"]
    ]
    assert warnings, second.stderr_text[-3000:]
    assert FILTER_A in warnings[0]["message"] and FILTER_B in warnings[0]["message"]
    # A new subscription starts at the oldest retained event: all ten again, under the new filter.
    assert_exact_events(emu, second.lines(), 1, 10)
    filters = sorted(s["filter"] for s in emu.status()["subscriptions"])
    assert filters == sorted([FILTER_A, FILTER_B])
    assert json.loads(state.read_text())["filter"] == FILTER_B
