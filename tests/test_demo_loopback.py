"""`kata-events demo` where loopback is down (a network namespace without ``lo`` up): it says so at
once and exits 69, instead of retrying its own emulator with back-off for minutes."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from run_helpers import clean_env, installed_command

pytestmark = pytest.mark.timeout(60)


def _namespace_without_loopback() -> None:
    """Skip unless ``unshare -rn`` can make a network namespace (its loopback is down)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rn is not allowed here: {probe.stderr.strip()}")


def test_the_demo_with_loopback_down_says_so_at_once(tmp_path) -> None:
    _namespace_without_loopback()
    started = time.monotonic()
    done = subprocess.run(
        ["unshare", "-rn", str(installed_command()), "demo", "--events", "5"],
        capture_output=True,
        text=True,
        env=clean_env({"TMPDIR": str(tmp_path)}),
        stdin=subprocess.DEVNULL,
        timeout=45,
    )
    print(done.stderr)
    assert done.returncode == 69, done.stderr
    assert done.stdout == ""
    assert "cannot reach its own emulator" in done.stderr and "on loopback" in done.stderr
    assert "ip link set lo up" in done.stderr
    assert "retry" not in done.stderr and "Traceback" not in done.stderr
    # Not the minutes of back-off: the first retry alone would be 1 s, the seventh ~40 s.
    assert time.monotonic() - started < 40
