"""`kata-events check`: walk through everything a run needs and say what is wrong and how to fix it.

It resolves the configuration exactly like ``run``, then checks the files, each address (DNS, TCP,
TLS with the same verification ``run`` uses), the approval and filter with one real request, and
the state file and its lock. One line per step goes to stderr; stdout stays empty. It never writes
the state file's token and never holds the lock longer than the check takes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import ssl
import sys
from typing import List, Optional, Tuple
from urllib.parse import urlsplit

from kata_events import api, certs, errors, keypair, state
from kata_events.config import Config, load_run_config
from kata_events.exits import ExitStatus, UserError
from kata_events.options import add_run_arguments
from kata_events.run_command import build_client, token_store

DESCRIPTION = """\
Check a set-up without streaming events: the configuration, the certificate and key, each
address (DNS, TCP, TLS and the server's identity), the approval of the external system and the
filter (one real request, which creates a throw-away subscription), and the state file and its
lock. One line per step on stderr; the exit code is that of the first failure, 0 if none.
"""

TCP_TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``check`` options: the same as ``run``'s."""
    add_run_arguments(parser)


class _Report:
    """Prints one line per step and remembers the exit code of the first failure."""

    def __init__(self) -> None:
        self.exit_code: Optional[ExitStatus] = None

    def line(self, status: str, step: str, message: str) -> None:
        sys.stderr.write(f"{status:<6}{step}: {message}\n")
        sys.stderr.flush()

    def ok(self, step: str, message: str) -> None:
        self.line("ok", step, message)

    def warn(self, step: str, message: str) -> None:
        self.line("warn", step, message)

    def skip(self, step: str, message: str) -> None:
        self.line("skip", step, message)

    def fail(self, step: str, message: str, code: ExitStatus) -> None:
        self.line("FAIL", step, message)
        if self.exit_code is None:
            self.exit_code = code


def _fp(hex_fingerprint: Optional[str]) -> str:
    return certs.format_fingerprint(hex_fingerprint) if hex_fingerprint else "unknown"


def _check_files(config: Config, report: _Report) -> bool:
    unusable = keypair.problem(config.cert, config.key)
    if unusable is not None:
        report.fail("files", unusable, ExitStatus.CONFIG)
        return False
    if config.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.ca_file))
        except (OSError, ssl.SSLError) as exc:
            report.fail(
                "files",
                f"the CA file {config.ca_file} holds no usable PEM certificate ({exc})",
                ExitStatus.NO_INPUT,
            )
            return False
    ca = f", CA file {config.ca_file}" if config.ca_file else ""
    report.ok(
        "files",
        f"certificate {config.cert} and key {config.key} match "
        f"(certificate SHA-256 {_fp(api.file_fingerprint(str(config.cert)))}){ca}",
    )
    exposed = keypair.key_exposure(config.key)
    if exposed is not None:
        report.warn("key", exposed)
    return True


def _tls_context(config: Config, with_client_cert: bool) -> ssl.SSLContext:
    if config.pin_sha256 or config.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # As run does: the CA file, or else the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR).
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if with_client_cert:
        ctx.load_cert_chain(str(config.cert), str(config.key))
    return ctx


def _connect(host: str, port: int, report: _Report, step: str) -> Optional[socket.socket]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        report.fail(
            f"{step} DNS",
            f"cannot resolve {host}: {exc}: check the host name in url and the DNS settings",
            ExitStatus.TEMP_FAIL,
        )
        return None
    addresses = sorted({info[4][0] for info in infos})
    report.ok(f"{step} DNS", f"{host} resolves to {', '.join(addresses)}")
    last: Optional[OSError] = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(TCP_TIMEOUT)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        report.ok(f"{step} TCP", f"connected to {address[0]} port {port}")
        return sock
    reason = "timed out" if isinstance(last, socket.timeout) else str(last)
    report.fail(
        f"{step} TCP",
        f"cannot connect to {host} port {port} ({reason}): check the address and port in url, "
        "that the Central Node is up, and that firewalls let this host through",
        ExitStatus.TEMP_FAIL,
    )
    return None


def _check_tls(config: Config, base: str, sock: socket.socket, files_ok: bool, report: _Report) -> bool:
    step = f"{base} TLS"
    host = urlsplit(base).hostname or ""
    try:
        ctx = _tls_context(config, files_ok)
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True) or b""
    except ssl.SSLCertVerificationError as exc:
        server_fp = api.probe_server_fingerprint(base, str(config.cert), str(config.key))
        report.fail(
            step,
            f"the server certificate was not trusted ({exc.verify_message or exc}); its SHA-256 is "
            f"{_fp(server_fp)}: if that is the Central Node's certificate, set pin_sha256 "
            f"(--pin-sha256 {_fp(server_fp)}), or give the CA that issued it with ca_file",
            ExitStatus.CONFIG,
        )
        return False
    except (OSError, ssl.SSLError) as exc:
        report.fail(step, api.handshake_failure(base, str(exc)), ExitStatus.CONFIG)
        return False
    finally:
        sock.close()
    server_fp = hashlib.sha256(der).hexdigest()
    if config.pin_sha256:
        if server_fp != config.pin_sha256:
            report.fail(
                step,
                f"the server certificate's SHA-256 {_fp(server_fp)} is not the pinned "
                f"{_fp(config.pin_sha256)}: if this is the Central Node, update pin_sha256",
                ExitStatus.CONFIG,
            )
            return False
        report.ok(step, f"server certificate matches the pin (SHA-256 {_fp(server_fp)})")
    elif config.insecure:
        report.warn(
            step,
            f"server certificate NOT verified (insecure = true; SHA-256 {_fp(server_fp)}): set "
            "pin_sha256 to this fingerprint or give ca_file instead",
        )
    else:
        report.ok(step, f"server certificate verified (SHA-256 {_fp(server_fp)})")
    return True


def _check_approval(config: Config, urls: List[str], report: _Report) -> None:
    client = build_client(config, urls=urls, max_events=1, max_timeout=1)
    note = "(one request, which creates a throw-away subscription; the state file is not touched)"
    try:
        page = client.fetch(None)
        page.close()
    except errors.Unauthorized as exc:
        report.fail(
            "approval",
            f"{exc}: approve external system {config.external_system_id} (certificate SHA-256 "
            f"{_fp(api.file_fingerprint(str(config.cert)))}) in the Central Node web interface, "
            "External systems; if it is approved already, compare the id and fingerprint shown "
            "there with these (a mistyped external_system_id looks exactly like a missing approval)",
            ExitStatus.CONFIG,
        )
        return
    except errors.BadRequest as exc:
        what = f"the filter {config.filter!r}" if config.filter else "the request"
        report.fail("filter", f"HTTP 400: the server refused {what}: {exc.reason}", ExitStatus.CONFIG)
        return
    except errors.Unavailable as exc:
        report.fail("approval", str(exc), ExitStatus.TEMP_FAIL)
        return
    except (errors.ApiError, OSError) as exc:
        report.fail("approval", str(exc) or exc.__class__.__name__, ExitStatus.CONFIG)
        return
    finally:
        client.close()
    report.ok("approval", f"external system {config.external_system_id} is approved {note}")
    if config.filter:
        report.ok("filter", f"the server accepted the filter {config.filter!r}")
    else:
        report.ok("filter", "no filter: all events")


def _check_state(config: Config, report: _Report) -> None:
    store = token_store(config)
    try:
        store.open()
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
    for warning in store.warnings:
        report.warn("state directory", warning)
    try:
        stored = store.stored()
        token, reason = store.load()
    except UserError as exc:
        report.fail("state", str(exc), exc.exit_code)
        return
    finally:
        store.close()
    if stored is None or stored.token is None:
        report.ok(
            "state",
            f"{config.state_file} is writable and unlocked; no saved token (a new subscription starts)",
        )
        return
    saved = f" saved at {stored.saved_at}" if stored.saved_at else ""
    if token is None:
        report.ok(
            "state",
            f"{config.state_file} is writable and unlocked; token {state.short_token(stored.token)}{saved} "
            f"would be dropped: {reason}",
        )
        return
    extra = f"; {reason}" if reason else ""
    report.ok(
        "state",
        f"{config.state_file} is writable and unlocked; resumes from token "
        f"{state.short_token(token)}{saved}{extra}",
    )


def _base_parts(base: str) -> Tuple[str, int]:
    parts = urlsplit(base)
    return parts.hostname or "", parts.port or 443


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
        "configuration",
        f"{source}; url {', '.join(config.url)}; external system {config.external_system_id}",
    )

    files_ok = _check_files(config, report)
    trusted: List[str] = []
    for base in config.url:
        host, port = _base_parts(base)
        sock = _connect(host, port, report, base)
        if sock is None:
            report.skip(f"{base} TLS", "no connection")
            continue
        if _check_tls(config, base, sock, files_ok, report):
            trusted.append(base)

    if not files_ok:
        report.skip("approval", "the certificate and key are not usable")
    elif not trusted:
        report.skip("approval", "no address could be reached and trusted")
    else:
        _check_approval(config, trusted, report)

    _check_state(config, report)
    return int(report.exit_code or ExitStatus.OK)
