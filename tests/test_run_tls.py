"""Acceptance: the Central Node's certificate is verified by default; a pin trusts exactly one
certificate; --insecure works but says so. Real TLS against the emulator's own CA and certificate.
"""

from __future__ import annotations

import os
import signal

import pytest

from kata_events.config.urls import format_fingerprint
from run_helpers import assert_exact_events, fingerprint_of_pem_file, run_args


def _refused(run, server_fp: str) -> None:
    failed = run.wait_event("tls_verify_failed", timeout=20)
    assert failed["server_fingerprint"] == server_fp
    assert server_fp in failed["message"]
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert run.output == b""
    run.assert_no_traceback()
    assert not run.other_stderr.strip(), run.other_stderr


@pytest.mark.timeout(40)
def test_an_unknown_server_certificate_is_refused_with_its_fingerprint(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("tls-unknown")
    server_fp = fingerprint_of_pem_file(emu.server_cert_file)
    run = runs.start(run_args(emu, ext_id, cert, tmp_path / "s.json", ca_file=False))
    _refused(run, server_fp)
    assert emu.status()["subscriptions"] == []


@pytest.mark.timeout(40)
@pytest.mark.parametrize("shape", ["hex", "colons"])
def test_the_right_pin_is_trusted(make_emulator, make_client_cert, ext_id, runs, tmp_path, shape):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("tls-pin")
    server_fp = fingerprint_of_pem_file(emu.server_cert_file)
    pin = server_fp if shape == "hex" else format_fingerprint(server_fp)
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--pin-sha256", pin, "--once", ca_file=False)
    run = runs.complete(args, timeout=30)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, 10)
    assert not run.events("tls_verify_failed") and not run.events("insecure")
    assert not run.other_stderr.strip(), run.other_stderr


@pytest.mark.timeout(40)
def test_a_wrong_pin_is_refused(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("tls-wrong-pin")
    server_fp = fingerprint_of_pem_file(emu.server_cert_file)
    wrong = fingerprint_of_pem_file(cert.cert_file)
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--pin-sha256", wrong, ca_file=False)
    run = runs.start(args)
    _refused(run, server_fp)


@pytest.mark.timeout(40)
def test_insecure_works_and_warns(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("tls-insecure")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--insecure", "--once", ca_file=False)
    run = runs.complete(args, timeout=30)
    assert run.returncode == 0, run.stderr_text[-3000:]
    warning = run.wait_event("insecure", timeout=1)
    assert warning["level"].upper() == "WARNING"
    assert_exact_events(emu, run.lines(), 1, 10)
    run.assert_no_traceback()
    assert not run.other_stderr.strip(), "stderr holds more than JSON log lines (a Python warning?)"


@pytest.mark.timeout(40)
def test_a_key_readable_by_other_accounts_is_warned_about_once_at_start(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=5)
    cert = make_client_cert("key-mode")
    os.chmod(cert.key_file, 0o640)
    run = runs.complete(run_args(emu, ext_id, cert, tmp_path / "s.json", "--once"), timeout=30)
    assert run.returncode == 0, run.stderr_text[-2000:]
    (warning,) = run.events("key_permissions")
    assert warning["level"] == "warning" and warning["key"] == str(cert.key_file)
    assert (
        f"chmod 600 {cert.key_file}" in warning["message"] and "its group (mode 0640)" in warning["message"]
    )
    assert len(run.lines()) == 5
