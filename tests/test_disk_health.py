"""Unit: `DiskHealth` logs a disk fault once, reminds while it lasts, and says when it is over."""

from __future__ import annotations

import errno
import io
import json

from kata_events import logs
from kata_events.delivery.disk_faults import REMIND_EVERY, RETRY_CAP, DiskHealth, is_disk_fault


def _records(stream: io.StringIO):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_cause_is_logged_once_then_reminded_then_the_recovery_is_said() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "json", stream=stream)
    now = [1000.0]
    health = DiskHealth(clock=lambda: now[0])
    assert not health.paused
    health.trouble("state file", "cannot write the state file: No space left on device")
    assert health.paused and health.failing("state file") and not health.failing("stdout")
    for _ in range(10):  # retries within the reminder period say nothing new
        now[0] += REMIND_EVERY / 20
        health.trouble("state file", "cannot write the state file: No space left on device")
    now[0] += REMIND_EVERY
    health.trouble("state file", "cannot write the state file: No space left on device")
    health.recovered("state file")
    health.recovered("state file")  # said once
    assert not health.paused
    said = [(r["event"], r["level"]) for r in _records(stream)]
    assert said == [("disk_fault", "error"), ("disk_fault", "warning"), ("disk_recovered", "info")]
    assert _records(stream)[2]["paused_seconds"] == 1.5 * REMIND_EVERY


def test_retries_back_off_up_to_the_cap_and_start_again_after_a_recovery() -> None:
    logs.setup_logging("error", "json", stream=io.StringIO())
    health = DiskHealth()
    health.trouble("stdout", "writing stdout failed: Input/output error")
    delays = [health.next_delay() for _ in range(12)]
    assert delays == sorted(delays) and delays[0] < 1 and delays[-1] == RETRY_CAP
    health.recovered("stdout")
    assert health.next_delay() == delays[0]


def test_which_errors_are_disk_faults() -> None:
    for code in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT):
        assert is_disk_fault(OSError(code, "x"))
    assert not is_disk_fault(OSError(errno.EPIPE, "x"))
    assert not is_disk_fault(ValueError("x"))
