"""After a 401 the runner retries every few seconds while an approval is likely under way, then at
the slow pace; the reminder after a long refusal says to compare the approved id and fingerprint.

A unit test on `Failures.unauthorized` with a fake clock: the real process is covered by
test_first_hour.py, but nobody waits ten minutes for a reminder there.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest

from kata_events import failures as failures_module
from kata_events.delivery.policies import Delivery
from kata_events.delivery.writer import LineWriter
from kata_events.failures import (
    UNAUTHORIZED_FRESH_FOR,
    UNAUTHORIZED_REMIND,
    UNAUTHORIZED_RETRY,
    UNAUTHORIZED_RETRY_FRESH,
)
from kata_events.runner import Runner
from kata_events.source.errors import Unauthorized

EXT_ID = "3f1c2a9e-6b7d-4e8f-9a0b-1c2d3e4f5a6b"


def test_401_pace_is_fast_while_fresh_then_slow_and_the_reminder_says_what_to_compare(
    monkeypatch: pytest.MonkeyPatch, client_cert: Any
) -> None:
    now = [1000.0]
    emitted: List[Tuple[str, str, dict]] = []
    monkeypatch.setattr(failures_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(
        failures_module.logs, "emit", lambda name, message, **fields: emitted.append((name, message, fields))
    )
    read_end, write_end = os.pipe()
    os.close(read_end)
    client = SimpleNamespace(cert=str(client_cert.cert_file), external_system_id=EXT_ID, url="https://cn")
    delivery = Delivery(LineWriter(write_end), commit=lambda token: None)
    runner = Runner(client=client, store=SimpleNamespace(), delivery=delivery)  # type: ignore[arg-type]
    refused = Unauthorized("HTTP 401")

    delays = []
    elapsed = 0.0
    while elapsed < UNAUTHORIZED_REMIND + 60:
        delay = runner.failures.unauthorized(refused)
        delays.append((elapsed, delay))
        now[0] += delay
        elapsed += delay
    assert all(d == UNAUTHORIZED_RETRY_FRESH for t, d in delays if t < UNAUTHORIZED_FRESH_FOR)
    assert all(d == UNAUTHORIZED_RETRY for t, d in delays if t >= UNAUTHORIZED_FRESH_FOR)
    fresh_tries = sum(1 for t, _ in delays if t < UNAUTHORIZED_FRESH_FOR)
    assert fresh_tries == UNAUTHORIZED_FRESH_FOR / UNAUTHORIZED_RETRY_FRESH  # 60 tries in 5 minutes

    told = [(message, fields) for name, message, fields in emitted if fields.get("level") != "DEBUG"]
    assert len(told) == 2  # the first refusal, then one reminder after UNAUTHORIZED_REMIND
    first, reminder = told[0][0], told[1][0]
    assert EXT_ID in first and "compare the id and fingerprint" in first
    assert "still HTTP 401 after 10 min" in reminder
    assert EXT_ID in reminder and "mistyped external_system_id" in reminder
    assert f"Retrying every {UNAUTHORIZED_RETRY:.0f} s" in reminder
    os.close(write_end)
