"""`kata-events check`: walk through everything a run needs and say what is wrong and how to fix it.

It resolves the configuration, the proxy and the TLS verification exactly like ``run`` (DESCRIPTION
lists the steps). One line per step goes to stderr; stdout stays empty. It never writes the state
file's token and never holds the lock longer than the check takes.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import socket
import ssl
import sys
from functools import partial, partialmethod
from typing import List, Optional
from urllib.parse import unquote, urlsplit

from kata_events import certs
from kata_events.commands.locate import token_store
from kata_events.config import Config, load_run_config, without_credentials
from kata_events.config.urls import format_fingerprint
from kata_events.exits import ExitStatus, UserError
from kata_events.key_password import configured as key_password
from kata_events.key_password import exposures, pair_problem
from kata_events.options import add_run_arguments
from kata_events.source import errors, transport
from kata_events.source.api import EventsClient
from kata_events.state import store as state

DESCRIPTION = """\
Check a set-up without streaming events: the configuration, the certificate and key, each
address (DNS, TCP, TLS and the server's identity), the approval of the external system and the
filter (one real request, which creates a throw-away subscription), and the state file and its
lock. One line per step on stderr; the exit code is that of the first failure, 0 if none.
It takes run's options; those only run uses (acknowledgements, --settle-time, --once, stats,
logs, metrics, --name, --max-events, --max-timeout, --max-event-bytes) are accepted and validated,
so a run's command line and config file can be checked as they are, and are not listed below.
"""


add_arguments = partial(add_run_arguments, show_run_only=False)


class _Report:
    """Prints one line per step (``quiet``: none, for a connection made only to read a fingerprint)
    and remembers the exit code of the first failure."""

    def __init__(self, quiet: bool = False) -> None:
        self.exit_code: Optional[ExitStatus] = None
        self.quiet = quiet

    def line(self, status: str, step: str, message: str, code: Optional[ExitStatus] = None) -> None:
        if not self.quiet:
            sys.stderr.write(f"{status:<6}{step}: {message}\n")
            sys.stderr.flush()
        if code is not None and self.exit_code is None:
            self.exit_code = code

    ok = partialmethod(line, "ok")
    warn = partialmethod(line, "warn")
    skip = partialmethod(line, "skip")
    fail = partialmethod(line, "FAIL")


def _fp(hex_fingerprint: Optional[str]) -> str:
    return format_fingerprint(hex_fingerprint) if hex_fingerprint else "unknown"


def _check_files(config: Config, report: _Report) -> bool:
    unusable = pair_problem(config.cert, config.key, key_password(config))
    if unusable is not None:
        report.fail("files", unusable, ExitStatus.CONFIG)
        return False
    if config.ca_file is not None:
        try:
            transport.context(transport.Trust("ca_file", str(config.ca_file)))
        except errors.TlsVerifyFailed as exc:
            report.fail("files", str(exc), ExitStatus.NO_INPUT)
            return False
    ca = f", CA file {config.ca_file}" if config.ca_file else ""
    report.ok(
        "files",
        f"certificate {config.cert} and key {config.key} match "
        f"(certificate SHA-256 {_fp(certs.file_fingerprint(str(config.cert)))}){ca}",
    )
    for exposed in exposures(config.key, key_password(config)).values():
        report.warn("key", exposed)
    return True


def _open(base: str, proxy: Optional[str], report: _Report) -> Optional[socket.socket]:
    """A TCP connection to ``base``, directly or through a CONNECT tunnel of ``proxy``, its DNS and
    TCP steps reported."""
    url, via = urlsplit(base), urlsplit(proxy or "")
    host, port = url.hostname or "", url.port or 443
    if proxy is None:
        return _connect(host, port, report, base)
    shown = without_credentials(proxy)
    proxy_host, proxy_port = via.hostname or "", via.port or (80 if via.scheme.lower() == "http" else 443)
    sock = _connect(proxy_host, proxy_port, report, base, proxy=shown)
    if sock is None:
        return None
    if proxy.lower().startswith("https:"):
        # TLS to the proxy as run has it (urllib3): the system's trust store, SSL_CERT_FILE.
        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=proxy_host)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            report.fail(
                f"{base} TCP",
                f"TLS with the proxy {shown} failed: {exc}: an https:// proxy's certificate is "
                "checked against the system's trust store; install its CA there, or point "
                "SSL_CERT_FILE at a bundle that holds it",
                ExitStatus.TEMP_FAIL,
            )
            return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if via.username is not None:
        token = base64.b64encode(f"{unquote(via.username)}:{unquote(via.password or '')}".encode()).decode()
        request += f"Proxy-Authorization: Basic {token}\r\n"
    try:
        sock.sendall((request + "\r\n").encode("latin-1"))
        answer = http.client.HTTPResponse(sock, method="CONNECT")
        answer.begin()
        status = f"HTTP/{answer.version / 10} {answer.status} {answer.reason}"
    except (OSError, http.client.HTTPException) as exc:
        status = f"no answer ({exc})"
    if not status.startswith("HTTP/") or answer.status != 200:
        sock.close()
        report.fail(
            f"{base} TCP",
            f"the proxy {shown} refused the tunnel to {target}: {status}: check the proxy option or "
            "HTTPS_PROXY (address, credentials) and that the proxy lets this host reach the Central Node",
            ExitStatus.TEMP_FAIL,
        )
        return None
    report.ok(f"{base} TCP", f"the proxy {shown} opened a tunnel to {target}")
    return sock


def _connect(host: str, port: int, report: _Report, step: str, proxy: str = "") -> Optional[socket.socket]:
    what = f"the proxy {proxy} " if proxy else ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        report.fail(
            f"{step} DNS",
            f"cannot resolve {what}{host}: {exc}: check the host name in "
            f"{'the proxy' if proxy else 'url'} and the DNS settings",
            ExitStatus.TEMP_FAIL,
        )
        return None
    addresses = sorted({info[4][0] for info in infos})
    report.ok(f"{step} DNS", f"{what}{host} resolves to {', '.join(addresses)}")
    try:  # each address in turn; the error is the last one's
        sock = socket.create_connection((host, port), timeout=5.0)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else str(exc)
        where, up = ("the proxy's address", "the proxy") if proxy else ("url", "the Central Node")
        report.fail(
            f"{step} TCP",
            f"cannot connect to {what}{host} port {port} ({reason}): check the address and port in "
            f"{where}, that {up} is up, and that firewalls let this host through",
            ExitStatus.TEMP_FAIL,
        )
        return None
    report.ok(f"{step} TCP", f"connected to {what}{sock.getpeername()[0]} port {port}")
    return sock


def _check_tls(
    config: Config, base: str, sock: socket.socket, files_ok: bool, report: _Report, proxy: Optional[str]
) -> bool:
    step = f"{base} TLS"
    host = urlsplit(base).hostname or ""
    via = f" through the proxy {without_credentials(proxy)}" if proxy else ""
    # As run does: pin, CA file, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, or the system's trust store.
    trust = transport.choose_trust(config)
    try:
        ours = (str(config.cert), str(config.key), key_password(config)) if files_ok else ()
        der = transport.peer_certificate(sock, transport.context(trust, *ours), host)
    except ssl.SSLCertVerificationError as exc:
        # For the message only: the fingerprint over a second, unverified handshake.
        probe = _open(base, proxy, _Report(quiet=True))
        server_fp = None if probe is None else transport.probe_server_fingerprint(base, sock=probe)
        report.fail(
            step,
            f"the server certificate{via} was not trusted by {trust.text} "
            f"({exc.verify_message or exc}); its SHA-256 is "
            f"{_fp(server_fp)}: if that is the Central Node's certificate, set pin_sha256 "
            f"(--pin-sha256 {_fp(server_fp)}), or give the CA that issued it with ca_file",
            ExitStatus.CONFIG,
        )
        return False
    except (OSError, ssl.SSLError) as exc:
        plain = f"TLS handshake with {base}{via} failed: {exc}"
        report.fail(step, plain if proxy else transport.handshake_failure(base, str(exc)), ExitStatus.CONFIG)
        return False
    finally:
        sock.close()
    server_fp = certs.sha256_fingerprint(der)
    if config.pin_sha256:
        if server_fp != config.pin_sha256:
            report.fail(
                step,
                f"the server certificate's SHA-256 {_fp(server_fp)} is not the pinned "
                f"{_fp(config.pin_sha256)}: if this is the Central Node, update pin_sha256",
                ExitStatus.CONFIG,
            )
            return False
        report.ok(step, f"server certificate{via} matches the pin (SHA-256 {_fp(server_fp)})")
    elif config.insecure:
        report.warn(
            step,
            f"server certificate{via} NOT verified (insecure = true; SHA-256 {_fp(server_fp)}): set "
            "pin_sha256 to this fingerprint or give ca_file instead",
        )
    else:
        report.ok(step, f"server certificate{via} verified (SHA-256 {_fp(server_fp)}) by {trust.text}")
    return True


def _check_approval(config: Config, urls: List[str], report: _Report) -> None:
    client = EventsClient(config, urls=urls, max_events=1, max_timeout=1)
    try:
        client.fetch(None).close()
    except errors.Unauthorized as exc:
        report.fail(
            "approval",
            f"{exc}: approve external system {config.external_system_id} (certificate SHA-256 "
            f"{_fp(certs.file_fingerprint(str(config.cert)))}) in the Central Node web interface, "
            "External systems; if it is approved already, compare the id and fingerprint shown "
            "there with these (a mistyped external_system_id looks exactly like a missing approval)",
            ExitStatus.CONFIG,
        )
    except errors.BadRequest as exc:
        what = f"the filter {config.filter!r}" if config.filter else "the request"
        report.fail("filter", f"HTTP 400: the server refused {what}: {exc}", ExitStatus.CONFIG)
    except errors.Unavailable as exc:
        report.fail("approval", str(exc), ExitStatus.TEMP_FAIL)
    except (errors.ApiError, OSError) as exc:
        report.fail("approval", str(exc) or exc.__class__.__name__, ExitStatus.CONFIG)
    else:
        note = "(one request, which creates a throw-away subscription; the state file is not touched)"
        report.ok("approval", f"external system {config.external_system_id} is approved {note}")
        accepted = f"the server accepted the filter {config.filter!r}"
        report.ok("filter", accepted if config.filter else "no filter: all events")
    finally:
        client.close()


def _check_state(config: Config, report: _Report) -> None:
    try:
        with token_store(config) as store:
            for warning in store.warnings:
                report.warn("state directory", warning)
            stored = store.stored()
            token, reason = store.load()
    except state.StateLocked as exc:
        who = f"pid {exc.holder_pid}" if exc.holder_pid else "pid unknown"
        report.warn(
            "state",
            f"another instance is running ({who}) with {config.state_file}; fine if it is the "
            "service itself, otherwise give this one its own state_file",
        )
        return
    except UserError as exc:
        report.fail("state", str(exc), exc.exit_code)
        return
    ready = f"{config.state_file} is writable and unlocked"
    saved = f" saved at {stored.saved_at}" if stored is not None and stored.saved_at else ""
    if stored is None or stored.token is None:
        ready += "; no saved token (a new subscription starts)"
    elif token is None:
        ready += f"; token {state.short_token(stored.token)}{saved} would be dropped: {reason}"
    else:
        ready += f"; resumes from token {state.short_token(token)}{saved}" + (f"; {reason}" if reason else "")
    report.ok("state", ready)


def run(args: argparse.Namespace) -> int:
    """Check everything ``run`` needs; return the exit code of the first failure, 0 if none."""
    report = _Report()
    try:
        config = load_run_config(args, os.environ)
    except UserError as exc:
        report.fail("configuration", str(exc), exc.exit_code)
        return int(exc.exit_code)
    source = f"config file {config.config_file}" if config.config_file else "no config file"
    report.ok(
        "configuration", f"{source}; url {', '.join(config.url)}; external system {config.external_system_id}"
    )

    files_ok = _check_files(config, report)
    trusted: List[str] = []
    for base in config.url:
        proxy = transport.proxy_for(base + "/", config.proxy)
        sock = _open(base, proxy, report)
        if sock is None:
            report.skip(f"{base} TLS", "no connection")
            continue
        if _check_tls(config, base, sock, files_ok, report, proxy):
            trusted.append(base)

    if not files_ok:
        report.skip("approval", "the certificate and key are not usable")
    elif not trusted:
        report.skip("approval", "no address could be reached and trusted")
    else:
        _check_approval(config, trusted, report)

    _check_state(config, report)
    return int(report.exit_code or ExitStatus.OK)
