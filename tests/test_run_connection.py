"""Acceptance: how `kata-events run` connects. Every page of a run rides one kept-alive TLS
connection; a connection the server closed while idle is replaced without a failed request; with no
ca_file the server is verified by the system's trust store, which SSL_CERT_FILE points elsewhere,
for `run` and `check` alike; a client certificate renewed in place is used from the next
connection on, and a half-done renewal keeps the last good pair; REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE alone verifies the server, and an explicit ca_file wins over them. Real processes against the
emulator over mutual TLS on loopback; the connections are counted by a loopback TCP proxy in front
of the emulator.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import List

import pytest

from emulator_helpers import ClientCert
from kata_events import certs
from kata_events.config.urls import format_fingerprint, normalize_fingerprint
from kata_events.emulator import server
from proxy_helpers import LoopbackProxy
from run_helpers import assert_exact_events, clean_env, run_args
from run_helpers import check as run_check

EVENTS = 300


def _every_event_through_a_proxy(emu, runs, args):
    """Complete the run through a loopback proxy counting connections; every event must arrive."""
    proxy = LoopbackProxy(("127.0.0.1", int(emu.url.rsplit(":", 1)[1])))
    args[args.index(emu.url)] = proxy.url
    try:
        run = runs.complete(args, timeout=40)
    finally:
        proxy.close()
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    return run, proxy.connections


@pytest.mark.timeout(60)
def test_every_page_rides_one_kept_alive_connection(make_emulator, make_client_cert, ext_id, runs, tmp_path):
    emu = make_emulator(backlog=EVENTS)
    args = run_args(emu, ext_id, make_client_cert("keep-alive"), tmp_path / "s.json", "--once")
    args += ["--max-events", "50"]
    _, connections = _every_event_through_a_proxy(emu, runs, args)
    assert emu.requests_served >= 7  # six full pages and the last, short one
    assert connections == 1


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
    run, connections = _every_event_through_a_proxy(emu, runs, args)
    retries = run.events("retry")
    assert len(retries) == 1 and "HTTP 429" in retries[0]["message"], retries
    # At least the one after the wait; on a loaded machine another gap between pages can pass
    # 0.3 s too, and that connection is replaced just as quietly (still no second retry).
    assert connections >= 2


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
    check = run_check(check_args, env)
    assert check.returncode == 0, check.stderr
    server_fp = format_fingerprint(certs.sha256_fingerprint(emu.server_cert_file.read_bytes()))
    assert f"ok    {emu.url} TLS: server certificate verified (SHA-256 {server_fp})" in check.stderr


def _install(cert: ClientCert, cert_file: Path, key_file: Path) -> None:
    """Put ``cert`` in place the way renewal tools do: each file written aside, then renamed over."""
    for source, target in ((cert.key_file, key_file), (cert.cert_file, cert_file)):
        aside = target.with_suffix(".new")
        shutil.copyfile(source, aside)
        os.replace(aside, target)


@pytest.mark.timeout(60)
def test_a_client_certificate_renewed_in_place_is_used_from_the_next_connection(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS)
    old, new = make_client_cert("before-renewal"), make_client_cert("after-renewal")
    cert_file, key_file = tmp_path / "client.crt", tmp_path / "client.key"
    _install(old, cert_file, key_file)
    in_place = ClientCert(cert_file, key_file, old.fingerprint)
    args = run_args(emu, ext_id, in_place, tmp_path / "s.json", "--max-events", "100", "--max-timeout", "1")
    run = runs.start(args)
    run.wait_lines(EVENTS, timeout=20)
    # Half renewed for a moment: the new key next to the old certificate. A connection made now
    # keeps the last good settings instead of failing.
    shutil.copyfile(new.key_file, key_file)
    emu.inject("drop")  # the next page breaks mid-body: the retry needs a new connection
    emu.add_events(EVENTS)
    run.wait_lines(EVENTS + 1, timeout=20)
    warning = run.wait_event("tls_files_changed", timeout=20)
    assert warning["level"] == "warning" and str(key_file) in warning["reason"], warning
    _install(new, cert_file, key_file)
    emu.inject("drop")
    emu.add_events(EVENTS)
    renewed = normalize_fingerprint(new.fingerprint)
    deadline = time.monotonic() + 20
    while renewed not in _approved_fingerprints(emu, ext_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.wait_lines(3 * EVENTS, timeout=20)
    run.send(signal.SIGTERM)
    assert run.wait(30) == 0, run.stderr_text[-3000:]
    assert renewed in _approved_fingerprints(emu, ext_id), run.stderr_text[-3000:]
    assert sorted(set(run.seqs())) == list(range(1, 3 * EVENTS + 1))
    assert not run.events("client_certificate") and not run.events("fatal")
    run.assert_no_traceback()


def _approved_fingerprints(emu, ext_id: str) -> List[str]:
    return [
        normalize_fingerprint(a["fingerprint"])
        for a in emu.status()["approved"]
        if a["external_system_id"] == ext_id
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_variable_alone_verifies_the_server(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, variable
):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("ca-bundle")
    env = clean_env({variable: str(emu.ca_file)})
    run = runs.complete(run_args(emu, ext_id, cert, tmp_path / "s.json", "--once", ca_file=False), env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, 10)
    assert run.wait_event("start", timeout=1)["verified_by"] == f"{variable} {emu.ca_file}"


@pytest.mark.timeout(60)
def test_an_explicit_ca_file_wins_over_a_bundle_that_cannot_verify_the_server(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=10)
    cert = make_client_cert("ca-file-wins")
    # A bundle of another CA (our own client certificate's): alone, it cannot verify the emulator.
    env = clean_env({"REQUESTS_CA_BUNDLE": str(cert.cert_file)})
    run = runs.complete(run_args(emu, ext_id, cert, tmp_path / "a.json", "--once"), env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, 10)
    assert run.wait_event("start", timeout=1)["verified_by"] == f"ca_file {emu.ca_file}"
    # Without the ca_file, that bundle is what verifies, and it refuses the server.
    run = runs.start(run_args(emu, ext_id, cert, tmp_path / "b.json", ca_file=False), env=env)
    failed = run.wait_event("tls_verify_failed", timeout=20)
    assert f"REQUESTS_CA_BUNDLE {cert.cert_file}" in failed["message"], failed
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert run.output == b""


@pytest.mark.timeout(60)
def test_run_loads_and_uses_requests_jsonschema_and_python_json_logger(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS)
    counts = tmp_path / "stack.json"
    probe = Path(__file__).with_name("stack_probe")
    env = clean_env({"PYTHONPATH": f"{probe}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    env["KATA_TEST_STACK_FILE"] = str(counts)
    args = run_args(
        emu, ext_id, make_client_cert("stack"), tmp_path / "s.json", "--once", "--max-events", "100"
    )
    run = runs.complete(args, env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    stack = json.loads(counts.read_text())
    assert stack["loaded"] == {"requests": True, "jsonschema": True, "pythonjsonlogger": True}, stack
    # Every request went through a requests Session; the configuration and each page's envelope
    # through a jsonschema validator; every log line through python-json-logger's formatter.
    assert stack["calls"]["requests"] == emu.requests_served >= 4, stack
    assert stack["calls"]["jsonschema"] >= 1 + emu.requests_served, stack
    assert stack["calls"]["pythonjsonlogger"] == len(run.logs) >= 3, stack
