"""Acceptance: how `kata-events run` connects. Every page of a run rides one kept-alive TLS
connection; a connection the server closed while idle is replaced without a failed request; with no
ca_file the server is verified by the system's trust store, which SSL_CERT_FILE points elsewhere,
for `run` and `check` alike. Real processes against the emulator over mutual TLS on loopback; the
connections are counted by a loopback TCP proxy in front of the emulator.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kata_events import certs
from kata_events.emulator import server
from proxy_helpers import LoopbackProxy
from run_helpers import assert_exact_events, clean_env, run_args

EVENTS = 300


def _through_proxy(emu, args):
    proxy = LoopbackProxy(("127.0.0.1", int(emu.url.rsplit(":", 1)[1])))
    args[args.index(emu.url)] = proxy.url
    return proxy


@pytest.mark.timeout(60)
def test_every_page_rides_one_kept_alive_connection(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu = make_emulator(backlog=EVENTS)
    args = run_args(emu, ext_id, make_client_cert("keep-alive"), tmp_path / "s.json", "--once")
    args += ["--max-events", "50"]
    proxy = _through_proxy(emu, args)
    try:
        run = runs.complete(args, timeout=40)
    finally:
        proxy.close()
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert emu.requests_served >= 7  # six full pages and the last, short one
    assert proxy.connections == 1


@pytest.mark.timeout(60)
def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_failure(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, monkeypatch
):
    # The emulator closes a connection idle for 0.3 s; the 429 makes the run wait 1 s before the
    # next request, on the connection that carried the 429.
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.3)
    emu = make_emulator(backlog=EVENTS)
    emu.inject("429", after=1, retry_after=1)
    args = run_args(emu, ext_id, make_client_cert("idle-close"), tmp_path / "s.json", "--once")
    args += ["--max-events", "100"]
    proxy = _through_proxy(emu, args)
    try:
        run = runs.complete(args, timeout=40)
    finally:
        proxy.close()
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    retries = run.events("retry")
    assert len(retries) == 1 and "HTTP 429" in retries[0]["message"], retries
    assert proxy.connections == 2


@pytest.mark.timeout(60)
def test_without_ca_file_the_system_trust_store_verifies_the_server(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("trust-store")
    # OpenSSL's own variable: the system's trust store is this file now.
    env = clean_env({"SSL_CERT_FILE": str(emu.ca_file)})
    run = runs.complete(run_args(emu, ext_id, cert, tmp_path / "s.json", "--once", ca_file=False), env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, 10)
    assert not run.events("tls_verify_failed")

    check_args = run_args(emu, ext_id, cert, tmp_path / "c.json", ca_file=False)
    check = subprocess.run(
        [sys.executable, "-m", "kata_events", "check", *check_args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert check.returncode == 0, check.stderr
    server_fp = certs.format_fingerprint(certs.sha256_fingerprint(emu.server_cert_file.read_bytes()))
    assert f"ok    {emu.url} TLS: server certificate verified (SHA-256 {server_fp})" in check.stderr
