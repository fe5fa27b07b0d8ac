"""Acceptance: `run` reaches the Central Node through an HTTP proxy as requests does.

HTTPS_PROXY carries every event through a CONNECT tunnel with TLS end to end (a wrong pin through
the proxy gets no event); NO_PROXY exempts the host; the ``proxy`` option wins over the
environment; a proxy that is down is retried and named as the proxy; the proxy's credentials
appear in no log line, debug level included. Real processes, the emulator over mutual TLS, and the
loopback CONNECT proxy of proxy_helpers.
"""

from __future__ import annotations

import signal
import time

import pytest

from proxy_helpers import LoopbackProxy
from run_helpers import assert_exact_events, check, clean_env, fingerprint_of_pem_file, run_args

EVENTS = 120


@pytest.fixture
def connect_proxy(make_emulator):
    """The emulator and a CONNECT proxy in front of it: (emu, proxy factory)."""
    emu = make_emulator(backlog=EVENTS)
    made = []

    def make(**kwargs):
        proxy = LoopbackProxy(("127.0.0.1", 9), connect=True, **kwargs)
        made.append(proxy)
        return proxy

    yield emu, make
    for proxy in made:
        proxy.close()


def _emu_target(emu) -> str:
    return emu.url.split("://", 1)[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_every_event_through_https_proxy(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, make = connect_proxy
    proxy = make()
    args = run_args(emu, ext_id, make_client_cert("proxy-env"), tmp_path / "s.json", "--once")
    args += ["--max-events", "50"]
    run = runs.complete(args, env=clean_env({"HTTPS_PROXY": proxy.url}))
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    # One tunnel, kept alive for every page, to the emulator's own address.
    assert [target for target, _ in proxy.tunnels] == [_emu_target(emu)]
    start = run.wait_event("start", timeout=1)
    assert start["proxies"] == {emu.url: proxy.url}
    assert start["verified_by"] == f"ca_file {emu.ca_file}"
    assert not run.other_stderr.strip(), run.other_stderr


@pytest.mark.timeout(60)
def test_a_wrong_pin_holds_through_the_proxy(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, make = connect_proxy
    proxy = make()
    cert = make_client_cert("proxy-pin")
    server_fp = fingerprint_of_pem_file(emu.server_cert_file)
    wrong = fingerprint_of_pem_file(cert.cert_file)
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--pin-sha256", wrong, ca_file=False)
    run = runs.start(args, env=clean_env({"HTTPS_PROXY": proxy.url}))
    failed = run.wait_event("tls_verify_failed", timeout=20)
    assert "fingerprints did not match" in failed["message"]
    assert server_fp in failed["message"] and failed["server_fingerprint"] == server_fp
    assert proxy.tunnels and proxy.tunnels[0][0] == _emu_target(emu)
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert run.output == b""
    # Checked before the request went out: the server never saw one.
    assert emu.requests_served == 0
    assert emu.status()["subscriptions"] == []


@pytest.mark.timeout(60)
def test_no_proxy_exempts_the_central_node(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, make = connect_proxy
    proxy = make()
    env = clean_env({"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"})
    args = run_args(emu, ext_id, make_client_cert("proxy-no"), tmp_path / "s.json", "--once")
    run = runs.complete(args, env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert proxy.connections == 0
    assert "proxies" not in run.wait_event("start", timeout=1)


@pytest.mark.timeout(60)
def test_the_proxy_option_wins_over_the_environment(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, make = connect_proxy
    chosen = make()
    # The environment names a proxy that is down and exempts the host: the option wins over both.
    down = f"http://127.0.0.1:{_free_port()}"
    env = clean_env({"HTTPS_PROXY": down, "NO_PROXY": "127.0.0.1", "KATA_EVENTS_PROXY": down})
    args = run_args(emu, ext_id, make_client_cert("proxy-option"), tmp_path / "s.json", "--once")
    run = runs.complete(args + ["--proxy", chosen.url], env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert [target for target, _ in chosen.tunnels] == [_emu_target(emu)]
    assert run.events("retry") == []


@pytest.mark.timeout(60)
def test_a_proxy_that_is_down_is_retried_and_named(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, _ = connect_proxy
    down = f"http://127.0.0.1:{_free_port()}"
    args = run_args(emu, ext_id, make_client_cert("proxy-down"), tmp_path / "s.json")
    run = runs.start(args, env=clean_env({"HTTPS_PROXY": down}))
    retry = run.wait_event("retry", timeout=20)
    assert f"through the proxy {down}" in retry["message"], retry
    assert f"the proxy {down} failed" in retry["message"] and "Connection refused" in retry["message"]
    assert emu.url not in retry["message"].split("through")[1]  # the proxy is blamed, not the node
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert emu.requests_served == 0


@pytest.mark.timeout(60)
def test_a_refusing_proxy_is_named(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, make = connect_proxy
    proxy = make(refuse=True)
    args = run_args(emu, ext_id, make_client_cert("proxy-refuse"), tmp_path / "s.json")
    run = runs.start(args, env=clean_env({"HTTPS_PROXY": proxy.url}))
    retry = run.wait_event("retry", timeout=20)
    assert f"the proxy {proxy.url} failed" in retry["message"] and "403" in retry["message"], retry
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", ["none", "cut", "403-unread"])
def test_a_proxy_that_ends_the_tunnel_unanswered_is_named_not_the_node(
    connect_proxy, make_client_cert, ext_id, runs, tmp_path, answer
):
    """A proxy that closes the connection without answering the CONNECT request, with half a status
    line, or writes a 403 without reading it: `run` blames the proxy, as `check` does, never the
    Central Node."""
    emu, make = connect_proxy
    proxy = make(answer=answer)
    args = run_args(emu, ext_id, make_client_cert(f"proxy-{answer}"), tmp_path / "s.json")
    run = runs.start(args, env=clean_env({"HTTPS_PROXY": proxy.url}))
    retry = run.wait_event("retry", timeout=20)
    message = retry["message"]
    assert message.startswith(f"cannot connect to {emu.url} through the proxy {proxy.url}: the proxy "), retry
    assert f"{emu.url} closed the connection" not in message, retry
    if answer in ("none", "cut"):
        assert "closed the connection without a complete answer to the CONNECT request" in message, retry
        assert ("(HTTP/1.1)" in message) == (answer == "cut"), retry
        assert "check the proxy option or HTTPS_PROXY" in message
    else:  # the 403 read, or the connection reset before it was
        assert "403" in message or "without a complete answer to the CONNECT request" in message, retry
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert emu.requests_served == 0
    done = check(args, env=clean_env({"HTTPS_PROXY": proxy.url}))
    assert f"the proxy {proxy.url} refused the tunnel" in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_proxy_credentials_appear_in_no_log_line(connect_proxy, make_client_cert, ext_id, runs, tmp_path):
    emu, make = connect_proxy
    secret = "pa55-w0rd-s3cret"
    proxy = make(credentials=f"collector:{secret}")
    args = run_args(emu, ext_id, make_client_cert("proxy-auth"), tmp_path / "s.json", "--once")
    args += ["--log-level", "debug", "--max-events", "50"]
    env = clean_env({"HTTPS_PROXY": proxy.url})
    run = runs.complete(args, env=env)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert proxy.tunnels[0][1] is not None  # the credentials were sent, to the proxy only
    assert len(run.logs) > 3 and "debug" in {r["level"].lower() for r in run.logs}
    assert secret not in run.stderr_text and "collector" not in run.stderr_text
    assert run.wait_event("start", timeout=1)["proxies"] == {emu.url: f"http://127.0.0.1:{proxy.port}"}
    # With the option, and a proxy that refuses them: still no credentials in any line.
    wrong = proxy.url.replace(secret, "wrong-" + secret)
    run = runs.start(args[:-4] + ["--proxy", wrong, "--log-level", "debug"], env=clean_env())
    retry = run.wait_event("retry", timeout=20)
    assert "407" in retry["message"], retry
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert secret not in run.stderr_text and "collector" not in run.stderr_text


@pytest.mark.timeout(60)
def test_check_goes_through_the_proxy_and_names_it(connect_proxy, make_client_cert, ext_id, tmp_path):
    emu, make = connect_proxy
    proxy = make(credentials="collector:s3cret-check")
    args = run_args(emu, ext_id, make_client_cert("check-proxy"), tmp_path / "s.json")
    done = check(args, clean_env({"HTTPS_PROXY": proxy.url}))
    assert done.returncode == 0, done.stderr
    shown = f"http://127.0.0.1:{proxy.port}"
    lines = done.stderr.splitlines()
    assert f"ok    {emu.url} TCP: connected to the proxy {shown} 127.0.0.1 port {proxy.port}" in lines
    assert f"ok    {emu.url} TCP: the proxy {shown} opened a tunnel to {_emu_target(emu)}" in lines
    assert any(f"{emu.url} TLS: server certificate through the proxy {shown} verified" in x for x in lines)
    assert "s3cret" not in done.stderr and len(proxy.tunnels) >= 2  # the TLS step, then the approval


@pytest.mark.timeout(60)
def test_check_names_a_refusing_or_down_proxy_as_the_proxy(connect_proxy, make_client_cert, ext_id, tmp_path):
    emu, make = connect_proxy
    proxy = make(refuse=True)
    args = run_args(emu, ext_id, make_client_cert("check-proxy-down"), tmp_path / "s.json")
    done = check(args, clean_env({"HTTPS_PROXY": proxy.url}))
    assert done.returncode == 75, done.stderr
    assert (
        f"FAIL  {emu.url} TCP: the proxy {proxy.url} refused the tunnel to {_emu_target(emu)}: "
        in done.stderr
    )
    assert "403 Forbidden" in done.stderr
    down = f"http://127.0.0.1:{_free_port()}"
    done = check(args, clean_env({"HTTPS_PROXY": down}))
    assert done.returncode == 75, done.stderr
    assert (
        f"FAIL  {emu.url} TCP: cannot connect to the proxy {down} 127.0.0.1 port {down.rsplit(':', 1)[1]}"
        in (done.stderr)
    )
    assert "that the proxy is up" in done.stderr


@pytest.fixture
def tls_proxy(make_emulator, tmp_path):
    """The emulator and an ``https://`` CONNECT proxy in front of it (its own CA, in a file):
    (emu, proxy, the proxy CA's file)."""
    import ssl

    from kata_events.emulator import certs

    emu = make_emulator(backlog=EVENTS, default_max_timeout=300)
    ca = certs.make_ca("proxy test CA")
    server = certs.make_server_cert(ca, ["127.0.0.1"])
    ca_file = tmp_path / "proxy-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    server.write(tmp_path / "proxy.crt", tmp_path / "proxy.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tmp_path / "proxy.crt"), str(tmp_path / "proxy.key"))
    proxy = LoopbackProxy(("127.0.0.1", 9), connect=True, tls=context)
    yield emu, proxy, ca_file
    proxy.close()


@pytest.mark.timeout(90)
def test_run_through_an_https_proxy_end_to_end_and_a_sigterm_in_its_long_poll(
    tls_proxy, make_client_cert, ext_id, runs, tmp_path
):
    """TLS to the proxy, the Central Node's TLS inside it (urllib3's TLS in TLS): every event, then
    a SIGTERM while the long poll waits in the tunnel ends the run at once, with its stop line."""
    emu, proxy, proxy_ca = tls_proxy
    assert proxy.url.startswith("https://")
    # The proxy's certificate is checked against the system's trust store: SSL_CERT_FILE points
    # OpenSSL at the proxy's CA (ca_file is the Central Node's).
    env = clean_env({"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(proxy_ca)})
    args = run_args(emu, ext_id, make_client_cert("tls-proxy"), tmp_path / "s.json", "--max-timeout", "300")
    run = runs.start(args, env=env)
    run.wait_lines(EVENTS, timeout=30)
    assert [target for target, _ in proxy.tunnels] == [_emu_target(emu)]
    start = run.wait_event("start", timeout=1)
    assert start["proxies"] == {emu.url: proxy.url}
    deadline = time.monotonic() + 20
    served = emu.requests_served
    while emu.requests_served < served + 1 and time.monotonic() < deadline:  # the empty page
        time.sleep(0.02)
    time.sleep(0.5)  # inside the next long poll, which the server holds for 300 s
    assert run.returncode is None
    run.send(signal.SIGTERM)
    assert run.wait(30) == 0, run.stderr_text[-3000:]
    run.assert_no_traceback()
    stop = run.wait_event("stop", timeout=5)
    assert "SIGTERM" in stop["message"] and stop["written"] == EVENTS, stop
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    assert not run.other_stderr.strip(), run.other_stderr


@pytest.mark.timeout(60)
def test_an_https_proxy_whose_certificate_is_not_trusted_is_named(
    tls_proxy, make_client_cert, ext_id, runs, tmp_path
):
    emu, proxy, _ = tls_proxy
    args = run_args(emu, ext_id, make_client_cert("tls-proxy-untrusted"), tmp_path / "s.json")
    run = runs.start(args, env=clean_env({"HTTPS_PROXY": proxy.url}))
    retry = run.wait_event("retry", timeout=20)
    assert f"through the proxy {proxy.url}" in retry["message"], retry
    assert "CERTIFICATE_VERIFY_FAILED" in retry["message"], retry
    assert "point SSL_CERT_FILE at a bundle that holds it" in retry["message"], retry
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    assert emu.requests_served == 0


@pytest.mark.timeout(60)
def test_check_goes_through_an_https_proxy_and_says_when_its_certificate_is_not_trusted(
    tls_proxy, make_client_cert, ext_id, tmp_path
):
    emu, proxy, proxy_ca = tls_proxy
    args = run_args(emu, ext_id, make_client_cert("check-tls-proxy"), tmp_path / "s.json")
    done = check(args, clean_env({"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(proxy_ca)}))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert f"ok    {emu.url} TCP: the proxy {proxy.url} opened a tunnel to {_emu_target(emu)}" in lines
    verified = f"{emu.url} TLS: server certificate through the proxy {proxy.url} verified"
    assert any(verified in x for x in lines), done.stderr
    assert any(x.startswith("ok    approval:") for x in lines), done.stderr
    untrusted = check(args, clean_env({"HTTPS_PROXY": proxy.url}))
    assert untrusted.returncode == 75, untrusted.stderr
    assert f"TLS with the proxy {proxy.url} failed" in untrusted.stderr
    assert "point SSL_CERT_FILE at a bundle that holds it" in untrusted.stderr


@pytest.mark.timeout(60)
def test_check_through_an_https_proxy_shows_an_untrusted_servers_fingerprint(
    tls_proxy, make_client_cert, ext_id, tmp_path
):
    emu, proxy, proxy_ca = tls_proxy
    server_fp = fingerprint_of_pem_file(emu.server_cert_file)
    args = run_args(emu, ext_id, make_client_cert("check-tls-proxy-fp"), tmp_path / "s.json", ca_file=False)
    done = check(args, clean_env({"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(proxy_ca)}))
    assert done.returncode == 78, done.stderr
    assert f"the server certificate through the proxy {proxy.url} was not trusted" in done.stderr
    from kata_events.config.urls import format_fingerprint

    assert f"--pin-sha256 {format_fingerprint(server_fp)}" in done.stderr, done.stderr
