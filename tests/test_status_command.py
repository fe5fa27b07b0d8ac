"""Acceptance: `kata-events status` (the installed command) beside real runs against the emulator.

OK after a good run, UNKNOWN without a state file, WARNING and CRITICAL while a run works through
a backlog of events 40 and 100 minutes old (the emulator stamps them so; slow answers keep the run
behind), CRITICAL while the run is refused (401); the JSON form parsed, the text form in the
monitoring-plugins style. The verdict's rules themselves are unit-tested on `evaluate`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any, Dict, Tuple

import pytest

from kata_events.commands.status import CRITICAL, NAMES, OK, UNKNOWN, WARNING, evaluate, stale_after
from run_helpers import clean_env, installed_command, run_args

_LINE = re.compile(r"^KATA-EVENTS (OK|WARNING|CRITICAL|UNKNOWN) - .+")


def status(state, *extra: str, fmt: str = "json") -> Tuple[int, Any]:
    """Run the installed ``kata-events status``: its exit code, and its JSON (or its text line)."""
    argv = [str(installed_command()), "status", "--state-file", str(state), "--format", fmt, *extra]
    done = subprocess.run(argv, capture_output=True, env=clean_env(), timeout=30)
    assert done.stderr == b"", done.stderr
    text = done.stdout.decode()
    if fmt == "text":
        assert _LINE.match(text) and text.count("\n") == 1, text
        return done.returncode, text
    doc = json.loads(text)
    assert doc["exit_code"] == done.returncode and doc["status"] == NAMES[done.returncode]
    return done.returncode, doc


def wait_status(state, code: int, timeout: float = 30.0) -> Dict[str, Any]:
    """Poll ``status`` (JSON) until it exits ``code``; then the text form says the same."""
    deadline = time.monotonic() + timeout
    while True:
        got, doc = status(state)
        if got == code:
            text_code, text = status(state, fmt="text")
            print(text)
            assert text_code == code and text.startswith(f"KATA-EVENTS {NAMES[code]} - "), text
            return doc
        assert time.monotonic() < deadline, f"status stayed {got}, not {code}: {doc}"
        time.sleep(0.3)


@pytest.mark.timeout(60)
def test_ok_after_a_good_run_and_unknown_without_a_state_file(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    state = tmp_path / "state.json"
    code, doc = status(state)
    assert code == UNKNOWN and "no state file" in doc["reason"]
    assert status(state, fmt="text")[0] == UNKNOWN
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    code, doc = status(garbled)
    assert code == UNKNOWN and {"status", "lag_seconds", "last_commit", "running", "reason"} <= set(doc)
    assert str(garbled) in doc["reason"], doc
    emu = make_emulator(backlog=50)
    run = runs.complete(run_args(emu, ext_id, client_cert, state, "--once"), timeout=30)
    assert run.returncode == 0, run.stderr_text[-3000:]
    code, doc = status(state)
    assert code == OK, doc
    assert {"status", "lag_seconds", "last_commit", "running", "reason"} <= set(doc)
    assert doc["status"] == "OK" and doc["running"] is False
    assert doc["lag_seconds"] < 30 and doc["last_commit_age_seconds"] < 30
    code, text = status(state, fmt="text")
    print(text)
    assert code == OK and re.search(r"\| lag=[0-9.]+s;1800;5400;0 ", text), text


@pytest.mark.timeout(90)
@pytest.mark.parametrize("minutes, expected", [(40, WARNING), (100, CRITICAL)])
def test_warning_and_critical_while_a_run_works_through_an_old_backlog(
    make_emulator, client_cert, ext_id, runs, tmp_path, minutes, expected
):
    emu = make_emulator()
    emu.add_events(2000, age=minutes * 60)
    emu.inject("slow", delay=0.3, count=1000)  # 10 events every 0.3 s: behind for a minute
    state = tmp_path / "state.json"
    run = runs.start(run_args(emu, ext_id, client_cert, state, "--max-events", "10", "--max-timeout", "1"))
    doc = wait_status(state, expected)
    assert doc["running"] is True and doc["pid"] == run.pid
    assert minutes * 60 - 5 <= doc["lag_seconds"] <= minutes * 60 + 60
    assert f"{minutes} min behind" in doc["reason"]
    assert 0 < len(run.lines()) < 2000, "the run should still be behind"


@pytest.mark.timeout(60)
def test_critical_while_the_run_is_refused(make_emulator, client_cert, ext_id, runs, tmp_path):
    emu = make_emulator(approve="manual", backlog=5)
    state = tmp_path / "state.json"
    run = runs.start(run_args(emu, ext_id, client_cert, state))
    run.wait_event("unauthorized", timeout=20)
    doc = wait_status(state, CRITICAL, timeout=10)
    assert "refused" in doc["reason"] and "401" in doc["reason"] and doc["running"] is True
    emu.approve(ext_id)
    run.wait_lines(5, timeout=20)
    doc = wait_status(state, OK, timeout=20)
    assert "caught up" in doc["reason"]


# -- the rules, unit by unit -------------------------------------------------------------------------

NOW = 1_800_000_000.0


def _record(**fields: Any) -> Dict[str, Any]:
    record = {"state": "streaming", "started_at": NOW - 600, "last_commit": NOW - 5, "max_timeout": 60}
    record.update(fields)
    return record


def test_lag_is_the_newest_events_age_only_while_the_server_has_more():
    behind = evaluate(None, True, _record(behind=True, newest_event=NOW - 2000), 42, NOW)
    assert (behind.exit_code, behind.lag_seconds) == (WARNING, 2000)
    caught_up = evaluate(None, True, _record(behind=False, newest_event=NOW - 9000), 42, NOW)
    assert (caught_up.exit_code, caught_up.lag_seconds) == (OK, 0)


def test_a_stopped_run_falls_behind_from_its_last_commit():
    stopped = evaluate(None, True, _record(state="stopped", last_commit=NOW - 6000), None, NOW)
    assert (stopped.exit_code, stopped.lag_seconds, stopped.running) == (CRITICAL, 6000, False)


def test_a_live_run_that_commits_nothing_for_long_is_critical():
    limit = stale_after(60)
    fine = evaluate(None, True, _record(last_commit=NOW - limit + 1), 42, NOW)
    stuck = evaluate(
        None, True, _record(last_commit=NOW - limit - 1, state="failing", reason="refused"), 42, NOW
    )
    assert fine.exit_code == OK and stuck.exit_code == CRITICAL
    assert "nothing committed" in stuck.reason


def test_a_recently_lost_subscription_is_critical_then_forgotten():
    recent = evaluate(None, True, _record(subscription_lost_at=NOW - 600), 42, NOW)
    old = evaluate(None, True, _record(subscription_lost_at=NOW - 8000), 42, NOW)
    assert recent.exit_code == CRITICAL and "skipped" in recent.reason and old.exit_code == OK


def test_a_state_saved_by_an_older_version_without_record_is_judged_by_its_age():
    saved_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 6000))
    verdict = evaluate(saved_at, True, None, None, NOW)
    assert (verdict.last_commit, verdict.lag_seconds, verdict.exit_code) == (saved_at, 6000, CRITICAL)
