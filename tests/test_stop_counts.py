"""The ``stop`` line counts what went out and what is saved, a page cut short included, and a stop is
one ``stop`` line: ``run | head -n 500`` (the reader gone in the middle of the first page), the
demo's ``--events 5``, and a shipper's STOP under the acknowledgement protocol (rsyslog improg).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from run_helpers import clean_env, command, installed_command, log_records, run_args

pytestmark = pytest.mark.timeout(120)


def _the_stop(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    stops = [r for r in records if r["event"] == "stop"]
    assert len(stops) == 1, stops
    return stops[0]


def test_run_into_head_counts_the_lines_that_went_out_of_the_first_page(
    tmp_path: Path, make_emulator: Callable[..., Emulator], ext_id: str, client_cert: ClientCert
) -> None:
    emu = make_emulator(backlog=3000)
    args = run_args(emu, ext_id, client_cert, tmp_path / "state", "--max-events", "10000")
    out = tmp_path / "head.out"
    with out.open("wb") as sink:
        kata = subprocess.Popen(
            command(args, installed=True),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            cwd=str(tmp_path),
        )
        assert kata.stdout is not None
        head = subprocess.Popen(["head", "-n", "500"], stdin=kata.stdout, stdout=sink)
        kata.stdout.close()  # head holds the only reading end
        try:
            _, err = kata.communicate(timeout=60)
        finally:
            if kata.poll() is None:
                kata.kill()
                kata.communicate()
        head.wait(timeout=30)
    assert kata.returncode == 0, err.decode()[-2000:]
    shown = out.read_bytes()
    assert shown.count(b"\n") == 500
    stop = _the_stop(log_records(err))
    assert stop["reason"] == "consumer gone", stop
    # Everything head printed was written, and received: neither count says 0.
    assert stop["written"] >= 500, stop
    assert stop["bytes"] >= len(shown), stop
    assert f"{stop['written']} event lines written" in stop["message"], stop
    # What is saved never exceeds what was written; the first page has no token to save yet.
    assert stop["committed_pages"] == 0 and 0 <= stop["committed_in_page"] <= stop["written"], stop


def test_the_demos_stop_line_counts_its_events_bytes_and_what_it_saved(tmp_path: Path) -> None:
    out = tmp_path / "events.ndjson"
    with out.open("wb") as sink:
        done = subprocess.run(
            [str(installed_command()), "demo", "--events", "5", "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.PIPE,
            env=clean_env({"XDG_STATE_HOME": str(tmp_path / "xdg")}),
            cwd=str(tmp_path),
            timeout=90,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    shown = out.read_bytes()
    assert shown.count(b"\n") == 5
    stop = _the_stop(log_records(done.stderr))
    assert (stop["events"], stop["written"]) == (5, 5), stop
    assert stop["bytes"] >= len(shown), stop
    # Into a file, a line is delivered once synced: the five are saved inside the first page.
    assert (stop["committed_pages"], stop["committed_in_page"]) == (0, 5), stop
    assert "5 event lines written; saved: 0 pages and 5 events after them" in stop["message"], stop


def test_a_shippers_stop_is_one_stop_line(
    tmp_path: Path, make_emulator: Callable[..., Emulator], ext_id: str, client_cert: ClientCert
) -> None:
    emu = make_emulator(backlog=300)
    args = run_args(emu, ext_id, client_cert, tmp_path / "state", "--ack", "auto", "--max-events", "1000")
    kata = subprocess.Popen(
        command(args, installed=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=str(tmp_path),
    )
    assert kata.stdin is not None and kata.stdout is not None
    try:
        # What rsyslog's improg does: START, an ACK per line taken, STOP, then the pipes close.
        kata.stdin.write(b"START\n")
        kata.stdin.flush()
        for _ in range(300):
            assert kata.stdout.readline().startswith(b"{")
            kata.stdin.write(b"ACK\n")
        kata.stdin.flush()
        time.sleep(0.5)
        kata.stdin.write(b"STOP\n")
        kata.stdin.close()
        kata.stdout.close()
        assert kata.stderr is not None
        err = kata.stderr.read()
        kata.wait(timeout=30)
    finally:
        if kata.poll() is None:
            kata.kill()
            kata.wait()
    assert kata.returncode == 0, err.decode()[-2000:]
    records = log_records(err)
    stop = _the_stop(records)
    assert stop["reason"] == "STOP" and stop["acknowledged"] == stop["written"] == 300, stop
    said = [r for r in records if r["event"] == "shipper_stop"]
    assert len(said) == 1 and said[0]["reason"] == "STOP", said
    # The page wholly acknowledged: its token is saved, and the line says so.
    assert stop["committed_pages"] == 1 and "saved: 1 page" in stop["message"], stop
