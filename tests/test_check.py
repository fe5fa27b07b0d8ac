"""`kata-events check` as a real process against the emulator over real mutual TLS: each problem a
user can have gets a FAIL line that names it and its fix; a clean set-up exits 0 with stdout empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import List

import pytest

from kata_events import certs
from kata_events.config.urls import format_fingerprint
from kata_events.state.progress import Point
from kata_events.state.store import TokenStore
from run_helpers import check, client_args, run_args


def _check(args: List[str]) -> subprocess.CompletedProcess:
    return check(args)


def _lines(result: subprocess.CompletedProcess, status: str) -> List[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(status)]


def _assert_clean(result: subprocess.CompletedProcess) -> None:
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.timeout(40)
def test_a_good_set_up_is_all_ok(make_emulator, make_client_cert, ext_id, tmp_path):
    emu = make_emulator()
    cert = make_client_cert("check-ok")
    result = _check(run_args(emu, ext_id, cert, tmp_path / "s.json"))
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    assert not _lines(result, "FAIL") and not _lines(result, "warn"), result.stderr
    server_fp = format_fingerprint(certs.sha256_fingerprint(emu.server_cert_file.read_bytes()))
    assert f"ok    {emu.url} TLS: server certificate verified (SHA-256 {server_fp})" in result.stderr
    for step in ("configuration", "files", "approval", "filter", "state"):
        assert any(line.startswith(f"ok    {step}:") for line in result.stderr.splitlines()), step
    assert "throw-away subscription" in result.stderr
    # The check never writes a token.
    assert not (tmp_path / "s.json").exists()


@pytest.mark.timeout(40)
def test_an_unapproved_system_names_the_id_and_fingerprint(make_emulator, make_client_cert, ext_id, tmp_path):
    emu = make_emulator(approve="manual")
    cert = make_client_cert("check-unapproved")
    result = _check(run_args(emu, ext_id, cert, tmp_path / "s.json"))
    _assert_clean(result)
    assert result.returncode == 78
    (line,) = _lines(result, "FAIL")
    assert line.startswith("FAIL  approval: HTTP 401")
    assert ext_id in line
    assert format_fingerprint(cert.fingerprint) in line
    assert "External systems" in line


@pytest.mark.timeout(40)
def test_an_untrusted_server_shows_its_fingerprint(
    make_emulator, make_client_cert, ext_id, tmp_path, monkeypatch
):
    emu = make_emulator()
    cert = make_client_cert("check-untrusted")
    # What OpenSSL's default trust store honours: here it must be the system's own.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    result = _check(run_args(emu, ext_id, cert, tmp_path / "s.json", ca_file=False))
    _assert_clean(result)
    assert result.returncode == 78
    server_fp = format_fingerprint(certs.sha256_fingerprint(emu.server_cert_file.read_bytes()))
    (line,) = _lines(result, "FAIL")
    assert line.startswith(f"FAIL  {emu.url} TLS:")
    assert server_fp in line and "pin_sha256" in line and "ca_file" in line
    assert "skip  approval" in result.stderr


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["pin", "wrong-pin", "insecure"])
def test_pin_and_insecure_are_checked_like_run(make_emulator, make_client_cert, ext_id, tmp_path, how):
    emu = make_emulator()
    cert = make_client_cert("check-pin")
    server_fp = certs.sha256_fingerprint(emu.server_cert_file.read_bytes())
    extra = {
        "pin": ["--pin-sha256", format_fingerprint(server_fp)],
        "wrong-pin": ["--pin-sha256", "ab" * 32],
        "insecure": ["--insecure"],
    }[how]
    result = _check(run_args(emu, ext_id, cert, tmp_path / "s.json", *extra, ca_file=False))
    _assert_clean(result)
    shown = format_fingerprint(server_fp)
    if how == "wrong-pin":
        assert result.returncode == 78
        (line,) = _lines(result, "FAIL")
        assert line.startswith(f"FAIL  {emu.url} TLS:") and shown in line and "pin_sha256" in line
        return
    assert result.returncode == 0, result.stderr
    assert "ok    approval:" in result.stderr
    if how == "pin":
        assert f"ok    {emu.url} TLS: server certificate matches the pin (SHA-256 {shown})" in result.stderr
    else:
        (line,) = _lines(result, "warn")
        assert line.startswith(f"warn  {emu.url} TLS: server certificate NOT verified") and shown in line


@pytest.mark.timeout(40)
def test_a_closed_port_fails_tcp(make_client_cert, ext_id, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cert = make_client_cert("check-closed")
    url = f"https://127.0.0.1:{port}"
    result = _check(client_args(url, ext_id, cert, tmp_path / "s.json"))
    _assert_clean(result)
    assert result.returncode == 75
    (line,) = _lines(result, "FAIL")
    assert line.startswith(f"FAIL  {url} TCP: cannot connect to 127.0.0.1 port {port}")
    assert f"ok    {url} DNS" in result.stderr


@pytest.mark.timeout(40)
def test_a_bad_filter_fails_with_the_reason(make_emulator, make_client_cert, ext_id, tmp_path):
    emu = make_emulator()
    cert = make_client_cert("check-filter")
    result = _check(run_args(emu, ext_id, cert, tmp_path / "s.json", "--filter", "Ioa.Severity =="))
    _assert_clean(result)
    assert result.returncode == 78
    (line,) = _lines(result, "FAIL")
    assert line.startswith("FAIL  filter: HTTP 400")
    assert "'Ioa.Severity =='" in line
    reason = line.split(": ", 3)[-1]
    assert reason.strip(), line


@pytest.mark.timeout(40)
def test_a_key_of_another_certificate_fails(make_emulator, make_client_cert, ext_id, tmp_path):
    emu = make_emulator()
    cert = make_client_cert("check-cert")
    other = make_client_cert("check-other")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json")
    args[args.index("--key") + 1] = str(other.key_file)
    result = _check(args)
    _assert_clean(result)
    assert result.returncode == 78  # the code run stops with for the same key
    (line,) = _lines(result, "FAIL")
    assert line.startswith("FAIL  files:") and str(other.key_file) in line
    assert "does not belong to the certificate" in line
    assert "skip  approval" in result.stderr


@pytest.mark.timeout(40)
def test_a_running_instance_is_a_warning(make_emulator, make_client_cert, ext_id, tmp_path):
    emu = make_emulator()
    cert = make_client_cert("check-locked")
    state_file = tmp_path / "s.json"
    store = TokenStore(state_file, url=emu.url, external_system_id=ext_id)
    store.open()
    try:
        store.commit_point(Point("a-saved-token-0123456789"))
        result = _check(run_args(emu, ext_id, cert, state_file))
    finally:
        store.close()
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    (line,) = _lines(result, "warn")
    assert line.startswith(f"warn  state: another instance is running (pid {os.getpid()})")
    # The saved token was left alone.
    with TokenStore(state_file, url=emu.url, external_system_id=ext_id) as again:
        assert again.load()[0] == "a-saved-token-0123456789"


@pytest.mark.timeout(40)
def test_a_saved_token_and_a_changed_filter_are_reported(make_emulator, make_client_cert, ext_id, tmp_path):
    emu = make_emulator()
    cert = make_client_cert("check-saved")
    state_file = tmp_path / "s.json"
    with TokenStore(state_file, url=emu.url, external_system_id=ext_id, filter="") as store:
        store.commit_point(Point("token-abcdefghijkl"))
    result = _check(run_args(emu, ext_id, cert, state_file, "--filter", "Ioa.Severity == 'High'"))
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("ok    state:")]
    assert "token-ab..." in line and "would be dropped" in line and "filter changed" in line
    assert Path(state_file).exists()


@pytest.mark.timeout(20)
def test_a_configuration_error_is_the_first_failure(tmp_path):
    result = _check(["--url", "https://127.0.0.1:1", "--state-file", str(tmp_path / "s.json")])
    _assert_clean(result)
    assert result.returncode == 78
    assert result.stderr.startswith("FAIL  configuration:")


@pytest.mark.timeout(40)
def test_a_key_readable_by_other_accounts_is_a_warning_with_the_chmod(
    make_emulator, make_client_cert, ext_id, tmp_path
):
    emu = make_emulator()
    cert = make_client_cert("check-key-mode")
    os.chmod(cert.key_file, 0o644)
    result = _check(run_args(emu, ext_id, cert, tmp_path / "s.json"))
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    (line,) = _lines(result, "warn")
    assert line.startswith(f"warn  key: the private key {cert.key_file} is accessible by its group and every")
    assert f"chmod 600 {cert.key_file}" in line
