"""The runner's reports about its health, replayed with a scripted clock and failures (no sockets):
the retry line after minutes of the same failure, the lag recovery line, the status record and the
metrics snapshot. The real-process tests (test_status_command, test_metrics) cover the wiring.
"""

from __future__ import annotations

import io
import json
import os
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest

from kata_events import logs
from kata_events.delivery.policies import Delivery
from kata_events.delivery.writer import LineWriter
from kata_events.failures import PERSISTENT_AFTER
from kata_events.runner import Runner
from kata_events.source.errors import Unauthorized, Unavailable
from kata_events.status_record import Health

URLS = ["https://cn.example.local:8443"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> io.StringIO:
    out = io.StringIO()
    logs.setup_logging("debug", "json", stream=out)
    return out


def _records(out: io.StringIO, name: str) -> List[Dict[str, Any]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return [r for r in lines if r["event"] == name]


def _runner(clock: Clock, tmp_path, max_events: int = 10) -> Runner:
    read_end, write_end = os.pipe()
    os.close(read_end)
    client = SimpleNamespace(
        urls=URLS, url=URLS[0], max_events=max_events, external_system_id="id", cert="/nonexistent"
    )
    runner = Runner(
        client=client,  # type: ignore[arg-type]
        store=SimpleNamespace(),  # type: ignore[arg-type]
        delivery=Delivery(LineWriter(write_end), commit=lambda point: None),
        clock=clock,
        lag_warning=1800,
        health=Health(tmp_path / "s.status", max_timeout=60, clock=clock),
    )
    runner.failures.sleep = lambda seconds: None
    return runner


def test_a_connection_refused_for_minutes_says_the_address_the_port_and_the_fix(tmp_path, logged):
    clock = Clock()
    runner = _runner(clock, tmp_path)
    refused = Unavailable(f"cannot connect to {URLS[0]}: Connection refused")
    for _ in range(int(PERSISTENT_AFTER // 20) + 2):
        runner.failures.handle(refused)
        clock.now += 20
    retries = _records(logged, "retry")
    assert "kata-events check" not in retries[0]["message"]
    last = retries[-1]["message"]
    print(last)
    assert "failing the same way for 3 min" in last and "cn.example.local port 8443" in last
    assert "address and port in url" in last and last.endswith("s")
    assert runner.reports.snapshot().retries == {"connection": len(retries)}
    assert runner.reports.snapshot().up is False
    record = json.loads((tmp_path / "s.status").read_text())
    assert record["state"] == "failing" and "Connection refused" in record["reason"]


def test_a_refusal_is_in_the_status_record(tmp_path, logged):
    clock = Clock()
    runner = _runner(clock, tmp_path)
    runner.failures.handle(Unauthorized("HTTP 401"))
    record = json.loads((tmp_path / "s.status").read_text())
    assert record["state"] == "refused" and "401" in record["reason"]


def _page(clock: Clock, runner: Runner, count: int, age: float) -> None:
    line = b'{"Timestamp":%d,"x":1}' % int((clock.now - age) * 1e6)
    page = SimpleNamespace(bytes_read=100 * count, base_url=URLS[0])
    runner.reports.account(page, count, line if count else None, 0.1)  # type: ignore[arg-type]


def test_lag_warns_when_behind_then_says_once_it_has_caught_up(tmp_path, logged):
    clock = Clock()
    runner = _runner(clock, tmp_path, max_events=10)
    _page(clock, runner, 10, age=3000)
    assert runner.reports.snapshot().lag_seconds == pytest.approx(3000, abs=1)
    clock.now += 1
    _page(clock, runner, 10, age=100)
    clock.now += 1
    _page(clock, runner, 3, age=5)
    assert len(_records(logged, "lag")) == 1
    (recovered,) = _records(logged, "lag_recovered")
    assert recovered["lag_seconds"] == pytest.approx(100, abs=1) and recovered["level"] == "info"
    assert runner.reports.snapshot().lag_seconds == 0  # the last answer was not full: caught up
    assert all(r["level"] == "debug" for r in _records(logged, "page"))
    runner.health.write()  # commits and pages only mark it changed: the refresh thread writes it
    record = json.loads((tmp_path / "s.status").read_text())
    assert record["state"] == "streaming" and record["behind"] is False and record["events"] == 23
