"""Acceptance: an encrypted client key, opened with a passphrase that is never shown.

``run`` and ``check`` open an encrypted PKCS#8 key with the passphrase from ``key_password_file``,
from ``KATA_EVENTS_KEY_PASSWORD`` or from a systemd credential (``$CREDENTIALS_DIRECTORY``), and
events arrive; a renewed key with a new passphrase file is used from the next connection; a wrong
or missing passphrase is one message naming the key and the option, exit 78. The passphrase is
searched for, and never found, in stdout, stderr, the status record and the metrics. ``init
--encrypt-key`` makes files that work as its own output says. Real processes against the emulator
over mutual TLS on loopback; the keys and passphrases are made here, at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from emulator_helpers import ClientCert
from kata_events import certs
from kata_events.commands.locate import RunFiles
from kata_events.config.urls import normalize_fingerprint
from run_helpers import assert_exact_events, clean_env, installed_command, run_args
from run_helpers import check as run_check

EVENTS = 40
#: Fixed passphrases (non-ASCII included: the variable and the file are UTF-8), so a failure shows
#: exactly what was searched for.
RIGHT = "Kata-пароль-7f3a9c2e51"
WRONG = "Kata-wrong-0d4b86a1e9"


def _encrypted(cert: ClientCert, directory: Path, passphrase: str, name: str = "client") -> ClientCert:
    """A copy of ``cert`` whose key is encrypted PKCS#8 with ``passphrase``."""
    key_file = directory / f"{name}.key"
    certs.write_private_file(key_file, certs.encrypt_key_pem(cert.key_file.read_bytes(), passphrase.encode()))
    cert_file = directory / f"{name}.crt"
    shutil.copyfile(cert.cert_file, cert_file)
    return ClientCert(cert_file, key_file, cert.fingerprint)


def _password_file(path: Path, passphrase: str) -> Path:
    certs.write_private_file(path, passphrase.encode() + b"\n")  # as `echo secret > file` writes it
    return path


def _assert_never_shown(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, f"the passphrase {secret!r} was shown in:\n{text[-3000:]}"


def _files_text(*paths: Path) -> List[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths if p.exists()]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", ["file", "variable", "credential"])
def test_run_and_check_open_an_encrypted_key_and_events_arrive(
    source: str, make_emulator, make_client_cert, ext_id, runs, tmp_path: Path
) -> None:
    emu = make_emulator(backlog=EVENTS)
    cert = _encrypted(make_client_cert("encrypted"), tmp_path, RIGHT)
    state_file, metrics = tmp_path / "s.json", tmp_path / "kata.prom"
    args = run_args(emu, ext_id, cert, state_file, "--once", "--metrics-file", str(metrics))
    extra: Dict[str, str] = {}
    if source == "file":
        args += ["--key-password-file", str(_password_file(tmp_path / "client.key.pass", RIGHT))]
    elif source == "variable":
        extra["KATA_EVENTS_KEY_PASSWORD"] = RIGHT
    else:
        credentials = tmp_path / "credentials"
        credentials.mkdir(mode=0o700)
        _password_file(credentials / "key-password", RIGHT)
        extra["CREDENTIALS_DIRECTORY"] = str(credentials)
    env = clean_env(extra)

    checked = run_check(args, env=env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == ""
    run = runs.complete(args, env=env, timeout=60)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    (config,) = run.events("config")
    if source == "variable":
        assert config["key_password"] == "<redacted>", config
        assert config["sources"]["key_password"] == "environment variable KATA_EVENTS_KEY_PASSWORD"
    _assert_never_shown(
        RIGHT,
        checked.stderr,
        run.output.decode("utf-8", "replace"),
        run.stderr_text,
        *_files_text(RunFiles(state_file).status, metrics),
    )
    assert RunFiles(state_file).status.exists() and metrics.exists()
    run.assert_no_traceback()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", ["file", "variable"])
def test_a_wrong_passphrase_is_one_message_naming_the_key_and_the_option(
    source: str, make_emulator, make_client_cert, ext_id, runs, tmp_path: Path
) -> None:
    emu = make_emulator(backlog=EVENTS)
    cert = _encrypted(make_client_cert("wrong-passphrase"), tmp_path, RIGHT)
    state_file, metrics = tmp_path / "s.json", tmp_path / "kata.prom"
    args = run_args(emu, ext_id, cert, state_file, "--once", "--metrics-file", str(metrics))
    extra: Dict[str, str] = {}
    if source == "file":
        password_file = _password_file(tmp_path / "client.key.pass", WRONG)
        args += ["--key-password-file", str(password_file)]
        origin = f"key_password_file {password_file}"
    else:
        extra["KATA_EVENTS_KEY_PASSWORD"] = WRONG
        origin = "the variable KATA_EVENTS_KEY_PASSWORD"
    env = clean_env(extra)
    expected = f"the passphrase from {origin} does not open the key {cert.key_file}"

    run = runs.complete(args, env=env, timeout=30)
    assert run.returncode == 78, run.stderr_text[-3000:]
    (fatal,) = run.events("fatal")
    assert expected in fatal["message"] and "key_password_file" in fatal["message"], fatal
    assert fatal["exit_code"] == 78
    assert run.output == b""
    assert "PEM lib" not in run.stderr_text
    checked = run_check(args, env=env)
    assert checked.returncode == 78
    assert f"FAIL  files: {expected}" in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr and checked.stdout == ""
    for secret in (RIGHT, WRONG):
        _assert_never_shown(
            secret,
            run.stderr_text,
            checked.stderr,
            *_files_text(RunFiles(state_file).status, metrics),
        )
    run.assert_no_traceback()


@pytest.mark.timeout(60)
def test_an_encrypted_key_without_a_passphrase_says_how_to_give_one(
    make_emulator, make_client_cert, ext_id, runs, tmp_path: Path
) -> None:
    emu = make_emulator()
    cert = _encrypted(make_client_cert("no-passphrase"), tmp_path, RIGHT)
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--once")
    run = runs.complete(args, env=clean_env(), timeout=30)
    assert run.returncode == 78
    (fatal,) = run.events("fatal")
    message = fatal["message"]
    assert f"the key {cert.key_file} is protected by a passphrase, and none is given" in message
    for way in ("key_password_file", "KATA_EVENTS_KEY_PASSWORD", "LoadCredential="):
        assert way in message, message
    run.assert_no_traceback()


@pytest.mark.timeout(60)
def test_the_passphrase_itself_is_refused_in_a_config_file(
    make_emulator, make_client_cert, ext_id, runs, tmp_path: Path
) -> None:
    emu = make_emulator()
    cert = _encrypted(make_client_cert("in-config"), tmp_path, RIGHT)
    config = tmp_path / "config.toml"
    config.write_text(f'key_password = "{RIGHT}"\n', encoding="utf-8")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--once", "--config", str(config))
    run = runs.complete(args, env=clean_env(), timeout=30)
    assert run.returncode == 78
    (fatal,) = run.events("fatal")
    assert f"key_password cannot be set in config file {config}" in fatal["message"], fatal
    assert "KATA_EVENTS_KEY_PASSWORD" in fatal["message"] and "key_password_file" in fatal["message"]
    _assert_never_shown(RIGHT, run.stderr_text)


@pytest.mark.timeout(90)
def test_a_key_renewed_with_a_new_passphrase_is_used_from_the_next_connection(
    make_emulator, make_client_cert, ext_id, runs, tmp_path: Path
) -> None:
    emu = make_emulator(backlog=EVENTS)
    old = _encrypted(make_client_cert("before"), tmp_path, RIGHT, "old")
    new_plain = make_client_cert("after")
    new = _encrypted(new_plain, tmp_path, WRONG, "new")  # another passphrase for the new key
    cert_file, key_file = tmp_path / "client.crt", tmp_path / "client.key"
    password_file = _password_file(tmp_path / "client.key.pass", RIGHT)
    shutil.copyfile(old.cert_file, cert_file)
    shutil.copyfile(old.key_file, key_file)
    in_place = ClientCert(cert_file, key_file, old.fingerprint)
    args = run_args(emu, ext_id, in_place, tmp_path / "s.json", "--max-events", "20", "--max-timeout", "1")
    args += ["--key-password-file", str(password_file)]
    run = runs.start(args, env=clean_env())
    run.wait_lines(EVENTS, timeout=20)
    # Renewal: key, passphrase and certificate each written aside and renamed over.
    for source, target in (
        (new.key_file, key_file),
        (_password_file(tmp_path / "pass.new", WRONG), password_file),
        (new.cert_file, cert_file),
    ):
        aside = target.with_suffix(".tmp")
        shutil.copyfile(source, aside)
        os.replace(aside, target)
    emu.inject("drop")  # the next page breaks mid-body: the retry needs a new connection
    emu.add_events(EVENTS)
    renewed = normalize_fingerprint(new_plain.fingerprint)
    deadline = time.monotonic() + 20
    while renewed not in _approved(emu, ext_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.wait_lines(2 * EVENTS, timeout=20)
    run.stop()
    assert renewed in _approved(emu, ext_id), run.stderr_text[-3000:]
    assert sorted(set(run.seqs())) == list(range(1, 2 * EVENTS + 1))
    # A connection made while the files were half replaced keeps the last good settings (a
    # tls_files_changed warning); what counts is that the new pair was used and nothing was fatal.
    assert not run.events("fatal")
    _assert_never_shown(RIGHT, run.stderr_text)
    _assert_never_shown(WRONG, run.stderr_text)
    run.assert_no_traceback()


def _approved(emu, ext_id: str) -> List[str]:
    return [
        normalize_fingerprint(a["fingerprint"])
        for a in emu.status()["approved"]
        if a["external_system_id"] == ext_id
    ]


def _kata(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed_command()), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(cwd),
        env=env or clean_env(),
    )


@pytest.mark.timeout(90)
def test_init_encrypt_key_output_works_as_written(make_emulator, runs, tmp_path: Path) -> None:
    emu = make_emulator(backlog=EVENTS)
    made = _kata("init", "--dir", "etc", "--url", emu.url, "--encrypt-key", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    directory = tmp_path / "etc"
    key, password = directory / "client.key", directory / "client.key.pass"
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (password.stat().st_mode & 0o777) == 0o600 and (key.stat().st_mode & 0o777) == 0o600
    passphrase = password.read_text().strip()
    assert len(passphrase) >= 32
    config = directory / "config.toml"
    assert 'key_password_file = "client.key.pass"' in config.read_text()
    assert "its passphrase in etc/client.key.pass" in made.stderr
    _assert_never_shown(passphrase, made.stderr, made.stdout)
    # Trust the emulator's CA, as the printed step 1 says (ca_file, see the comments in the file).
    text = config.read_text().replace('# ca_file = "central-node-ca.pem"', f'ca_file = "{emu.ca_file}"')
    config.write_text(text)

    # The commands exactly as init printed them, from the directory it was run in.
    commands = [line.split("(")[0].split() for line in made.stderr.splitlines() if "kata-events " in line]
    check_line = next(c for c in commands if c[:2] == ["kata-events", "check"])
    run_line = next(c for c in commands if c[:2] == ["kata-events", "run"])
    env = clean_env({"XDG_STATE_HOME": str(tmp_path / "state")})
    checked = _kata(*check_line[1:], cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    run = runs.start([*run_line[2:], "--once", "--settle-time", "0"], env=env, installed=True)
    run.wait(40)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert_exact_events(emu, run.lines(), 1, EVENTS)
    _assert_never_shown(passphrase, checked.stderr, run.stderr_text)


@pytest.mark.timeout(60)
def test_a_passphrase_file_readable_by_other_accounts_is_warned_about(
    make_emulator, make_client_cert, ext_id, runs, tmp_path: Path
) -> None:
    emu = make_emulator(backlog=5)
    cert = _encrypted(make_client_cert("pass-mode"), tmp_path, RIGHT)
    password_file = _password_file(tmp_path / "client.key.pass", RIGHT)
    os.chmod(password_file, 0o640)
    args = run_args(emu, ext_id, cert, tmp_path / "s.json", "--once")
    args += ["--key-password-file", str(password_file)]
    run = runs.complete(args, env=clean_env(), timeout=30)
    assert run.returncode == 0, run.stderr_text[-2000:]
    (warning,) = run.events("key_permissions")
    assert warning["key"] == str(password_file) and f"chmod 600 {password_file}" in warning["message"]
    assert "its group (mode 0640)" in warning["message"]
    assert len(run.lines()) == 5
    checked = run_check(args, env=clean_env())
    assert checked.returncode == 0, checked.stderr
    assert (
        f"warn  key: the key's passphrase file {password_file} is accessible by its group" in checked.stderr
    )
    _assert_never_shown(RIGHT, run.stderr_text, checked.stderr)
