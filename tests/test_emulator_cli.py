"""``kata-events emulator`` as users run it: --help, the curl walk-through, signals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from determinism import fixed_uuid
from emulator_helpers import ClientCert

pytestmark = pytest.mark.timeout(60)

KATA_EVENTS = [sys.executable, "-m", "kata_events"]


def _cli_path() -> List[str]:
    script = shutil.which("kata-events", path=os.path.dirname(sys.executable))
    return [script] if script else KATA_EVENTS


def test_help_explains_every_option() -> None:
    result = subprocess.run(_cli_path() + ["emulator", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    text = result.stdout
    for option in (
        "--listen",
        "--state-dir",
        "--approve",
        "--backlog",
        "--rate",
        "--event-bytes",
        "--retention",
        "--max-events-limit",
        "--default-max-timeout",
        "--seed",
        "--fault",
        "--log-level",
    ):
        assert option in text, option
    # Defaults are stated, and the fault syntax and control endpoints are documented.
    for fragment in (
        "127.0.0.1:8443",
        "default: manual",
        "default: 1000",
        "default: 7200",
        "72000",
        "503x3",
        "drop@10",
        "retry_after",
        "/emulator/approve",
        "/emulator/faults",
        "hang",
        "truncated",
        "no_token",
        "contains",
    ):
        assert fragment in text, fragment


def _start_cli(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    state = tmp_path / "state"
    log = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen(
        _cli_path() + ["emulator", "--listen", "127.0.0.1:0", "--state-dir", str(state), *extra],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = (tmp_path / "stderr.log").read_text(errors="replace")
        match = re.search(r"URL:\s+(https://127\.0\.0\.1:\d+)", text)
        if match:
            return proc, match.group(1), state
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("emulator did not start:\n" + (tmp_path / "stderr.log").read_text(errors="replace"))


def _curl(*args: str) -> tuple[int, Dict[str, Any]]:
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), (json.loads(body) if body else {})


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("openssl"), reason="needs curl and openssl")
def test_acceptance_walkthrough_with_curl_and_an_openssl_certificate(
    tmp_path: Path, make_client_cert: Callable[..., ClientCert]
) -> None:
    cert = make_client_cert("walkthrough", openssl=True)
    proc, url, state = _start_cli(tmp_path, "--approve", "manual", "--rate", "0")
    try:
        ca = str(state / "ca.crt")
        ext_id = fixed_uuid()
        events = f"{url}/kata/events_api/v1/{ext_id}/events"
        mtls = ["--cert", str(cert.cert_file), "--key", str(cert.key_file), "--cacert", ca]

        code, body = _curl(*mtls, f"{events}?max_events=5")
        assert (code, body) == (401, {"error": "Unauthorized"})

        # The emulator printed the exact approval command; run it.
        log = (tmp_path / "stderr.log").read_text()
        assert cert.fingerprint in log and ext_id in log
        commands = [c for c in re.findall(r"curl -X POST --cacert (\S+) '([^']+)'", log) if ext_id in c[1]]
        assert len(commands) == 1 and commands[0][0] == ca
        code, body = _curl("-X", "POST", "--cacert", ca, commands[0][1])
        assert code == 200 and body["approved"][0]["fingerprint"] == cert.fingerprint

        code, first = _curl(*mtls, f"{events}?max_events=5")
        assert code == 200 and [e["EmulatorSeq"] for e in first["events"]] == [1, 2, 3, 4, 5]
        code, second = _curl(*mtls, f"{events}?max_events=5&continuation_token={first['continuationToken']}")
        assert code == 200 and [e["EmulatorSeq"] for e in second["events"]] == [6, 7, 8, 9, 10]
        code, body = _curl(*mtls, f"{events}?max_events=5&continuation_token=made-up")
        assert code == 404 and body == {"error": "Subscription not found"}
        code, body = _curl(*mtls, f"{events}?max_events=0")
        assert code == 400 and "max_events" in body["reason"]
        assert proc.stdout is not None
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out == b""  # nothing on stdout, ever


def test_sigterm_stops_promptly_with_a_long_poll_open(tmp_path: Path, client_cert: ClientCert) -> None:
    proc, url, state = _start_cli(
        tmp_path, "--approve", "auto", "--backlog", "0", "--rate", "0", "--fault", "hang"
    )
    curl = subprocess.Popen(
        [
            "curl",
            "-sS",
            "--cert",
            str(client_cert.cert_file),
            "--key",
            str(client_cert.key_file),
            "--cacert",
            str(state / "ca.crt"),
            f"{url}/kata/events_api/v1/{fixed_uuid()}/events",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert time.monotonic() - started < 30  # the request that hangs for ever did not hold it
        assert proc.returncode == 0
    finally:
        curl.kill()
        curl.wait()
        if proc.poll() is None:
            proc.kill()


def test_bad_fault_spec_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        _cli_path() + ["emulator", "--state-dir", str(tmp_path), "--fault", "teapot"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 64  # EX_USAGE, as for every usage error
    assert "unknown fault kind" in result.stderr or "cannot parse fault" in result.stderr
