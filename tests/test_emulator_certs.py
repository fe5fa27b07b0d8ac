"""kata_events.certs: CA, server and client certificates, private files, fingerprints."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from kata_events import certs
from kata_events.config.urls import format_fingerprint, normalize_fingerprint
from kata_events.emulator import certs as emulator_certs


def test_server_certificate_chains_to_the_ca_and_names_its_hosts(tmp_path: Path) -> None:
    ca = emulator_certs.make_ca()
    server = emulator_certs.make_server_cert(ca, ["localhost", "127.0.0.1", "::1", "cn.example.local"])
    assert set(emulator_certs.cert_subject_alt_names(server.cert_pem)) == {
        "localhost",
        "127.0.0.1",
        "::1",
        "cn.example.local",
    }
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    server.write(tmp_path / "s.crt", tmp_path / "s.key")
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "s.crt")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # The key matches the certificate (load_cert_chain checks it).
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(tmp_path / "s.crt"), str(tmp_path / "s.key"))


def test_self_signed_client_certificate_is_like_openssl_req_x509() -> None:
    pair = certs.make_self_signed_cert("kata-events-client")
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert cert.subject == cert.issuer
    assert "kata-events-client" in cert.subject.rfc4514_string()
    assert pair.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert cert.public_key().key_size == 2048


def test_private_files_are_0600_and_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    certs.write_private_file(target, b"one")
    certs.write_private_file(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_fingerprint_matches_openssl(tmp_path: Path) -> None:
    pair = certs.make_self_signed_cert("fp", key_type="ec")
    pair.write(tmp_path / "c.crt", tmp_path / "c.key")
    out = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "c.crt"), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shown = out.strip().split("=", 1)[1]
    assert format_fingerprint(certs.sha256_fingerprint(pair.cert_pem)) == shown
    der = ssl.PEM_cert_to_DER_cert(pair.cert_pem.decode())
    assert certs.sha256_fingerprint(der) == certs.sha256_fingerprint(pair.cert_pem) == pair.fingerprint
    assert normalize_fingerprint(shown) == pair.fingerprint


@given(st.binary(min_size=32, max_size=32))
def test_fingerprint_spellings_round_trip(digest: bytes) -> None:
    hex_form = digest.hex()
    colons = format_fingerprint(hex_form)
    assert len(colons) == 95 and colons == colons.upper()
    assert normalize_fingerprint(colons) == hex_form
    assert normalize_fingerprint(colons.lower().replace(":", " ")) == hex_form


@pytest.mark.parametrize("bad", ["", "abc", "zz" * 32, "ab" * 31, "ab" * 33])
def test_bad_fingerprints_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_fingerprint(bad)
