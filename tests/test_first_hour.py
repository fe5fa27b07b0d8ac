"""What a new user meets in the first hour, through the installed ``kata-events`` command.

Each mistake gets one message naming the cause and the fix, and one exit code whichever command
meets it: the demo's event count, a port speaking plain HTTP, a key that is not the certificate's,
an id that was never approved, a mistyped flag, a URL without its scheme. Real processes, real
mutual TLS against the emulator on loopback, a real plain-HTTP server.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from kata_events import logs
from kata_events.config.urls import format_fingerprint, normalize_fingerprint
from run_helpers import clean_env, client_args, installed_command, log_records, run_args, seq_of

DEMO_BACKLOG = 20


def _kata(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed command with ``args``, run to its end; stdin closed as in a terminal-less job."""
    return subprocess.run(
        [str(installed_command()), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=clean_env(),
    )


# -- 1. demo --events N ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "count, rate",
    [(5, "2"), (DEMO_BACKLOG, "2"), (DEMO_BACKLOG + 1, "2"), (50, "40")],
    ids=["below-backlog", "at-backlog", "just-above", "well-above"],
)
def test_demo_prints_exactly_the_events_asked_for(count: int, rate: str) -> None:
    done = _kata("demo", "--events", str(count), "--rate", rate, "--log-format", "json")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == count, f"{len(lines)} lines for --events {count}"
    assert [seq_of(line) for line in lines] == list(range(1, count + 1))
    records = log_records(done.stderr)
    (stop,) = [r for r in records if r["event"] == "stop"]
    assert stop["reason"] == f"{count} events shown"
    assert stop["events"] == count and stop["written"] == count  # written counts lines
    # Every line on stderr is an event of the catalogue (and so of the documented table).
    assert {r["event"] for r in records} <= set(logs.EVENTS), records
    assert any(r["event"] == "emulator" for r in records)


# -- 2. a port that speaks plain HTTP -------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_http_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PLAIN_HTTP = "answers plain HTTP, not TLS: check the port in url"


@pytest.mark.timeout(60)
def test_a_plain_http_port_is_named_by_check_and_run(
    plain_http_url: str, make_client_cert, ext_id: str, runs, tmp_path: Path
) -> None:
    cert = make_client_cert("plain-http")
    args = client_args(plain_http_url, ext_id, cert, tmp_path / "s.json")
    checked = _kata("check", *args)
    assert checked.returncode == 78
    fail = [line for line in checked.stderr.decode().splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and "TLS" in fail[0] and PLAIN_HTTP in fail[0], checked.stderr.decode()

    run = runs.start([*args, "--stats-interval", "0"], installed=True)
    retry = run.wait_event("retry", timeout=20)
    assert PLAIN_HTTP in retry["message"] and plain_http_url in retry["message"]
    assert "WRONG_VERSION_NUMBER" not in retry["message"]
    run.send(15)
    assert run.wait(10) == 0  # a transient fault for run: it retries until stopped
    run.assert_no_traceback()


# -- 3. a key that is not the certificate's -------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wrong", ["other-key", "certificate-as-key"])
def test_an_unusable_key_has_one_message_and_one_code(
    wrong: str, make_emulator, make_client_cert, ext_id: str, tmp_path: Path
) -> None:
    emu = make_emulator()
    cert, other = make_client_cert("pair"), make_client_cert("other")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json")
    bad_key = other.key_file if wrong == "other-key" else cert.cert_file
    args[args.index("--key") + 1] = str(bad_key)
    expected = {
        "other-key": f"the key {bad_key} does not belong to the certificate {cert.cert_file}",
        "certificate-as-key": f"the key file {bad_key} holds a certificate, not a private key",
    }[wrong]

    ran = _kata("run", *args)
    assert ran.returncode == 78
    records = log_records(ran.stderr)
    (fatal,) = [r for r in records if r["event"] == "fatal"]
    assert expected in fatal["message"] and "kata-events init" in fatal["message"]
    assert fatal["reason"] == "client certificate"
    assert not [r for r in records if r.get("reason") == "finished"]
    assert b"PEM lib" not in ran.stderr and b"KEY_VALUES_MISMATCH" not in ran.stderr
    assert ran.stdout == b""

    checked = _kata("check", *args)
    assert checked.returncode == 78
    text = checked.stderr.decode()
    assert f"FAIL  files: {expected}" in text and "Traceback" not in text


# -- 4 and 6. a 401: what to compare, and how soon an approval is noticed -------------------------


@pytest.mark.timeout(60)
def test_a_401_says_what_to_compare_and_an_approval_is_noticed_within_seconds(
    make_emulator, make_client_cert, ext_id: str, runs, tmp_path: Path
) -> None:
    emu = make_emulator(approve="manual", backlog=3)
    cert = make_client_cert("approval")
    args = run_args(emu, ext_id, cert, tmp_path / "s.json")

    checked = _kata("check", *args)
    assert checked.returncode == 78
    (fail,) = [line for line in checked.stderr.decode().splitlines() if line.startswith("FAIL")]
    assert fail.startswith("FAIL  approval:") and ext_id in fail
    assert "compare the id and fingerprint" in fail

    run = runs.start(args, installed=True)
    told = run.wait_event("unauthorized", timeout=20)
    fingerprint = format_fingerprint(normalize_fingerprint(cert.fingerprint))
    for part in (
        ext_id,
        fingerprint,
        "compare the id and fingerprint",
        "mistyped external_system_id",
        "every 5 s for 5 min, then every 30 s",
    ):
        assert part in told["message"], told["message"]
    time.sleep(1)
    emu.approve(ext_id, cert.fingerprint)
    approved_at = time.monotonic()
    approved = run.wait_event("approved", timeout=20)
    waited = approved["_at"] - approved_at
    print(f"approval noticed {waited:.1f} s after it was given")
    assert waited <= 8  # the fresh pace is 5 s; before, it was up to 30 s
    run.wait_lines(3, timeout=15)
    run.send(15)
    assert run.wait(10) == 0


# -- 7. a mistyped flag, a URL without its scheme -------------------------------------------------


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_mistyped_flag_gets_the_subcommands_usage_and_a_guess(command: str) -> None:
    done = _kata(command, "--confg", "x")
    assert done.returncode == 64
    text = done.stderr.decode()
    if command == "run":  # one fatal log line, the usage in a field
        (record,) = log_records(done.stderr)
        assert record["event"] == "fatal" and record["exit_code"] == 64
        text = record["usage"] + "\n" + record["message"]
    assert f"usage: kata-events {command}" in text
    assert "unrecognized arguments: --confg x: did you mean --config?" in text


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_url_without_https_is_a_configuration_error(command: str, client_cert, ext_id: str) -> None:
    done = _kata(
        command,
        "--url",
        "127.0.0.1:8443",
        "--external-system-id",
        ext_id,
        "--cert",
        str(client_cert.cert_file),
        "--key",
        str(client_cert.key_file),
    )
    assert done.returncode == 78
    text = done.stderr.decode()
    if command == "run":  # one fatal log line (check reports for people, step by step)
        (record,) = log_records(done.stderr)
        assert record["event"] == "fatal" and record["exit_code"] == 78
        text = record["message"]
    assert 'url = "127.0.0.1:8443" (from --url): the scheme is missing: write https://127.0.0.1:8443' in text
    assert "Traceback" not in done.stderr.decode()


# -- 5. the README's first connection, in its order -----------------------------------------------


@pytest.mark.timeout(90)
def test_the_readme_first_connection_works_in_its_order(make_emulator, runs, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    steps = [
        readme.index(s)
        for s in (
            "kata-events init --dir",
            "**Trust the Central Node's certificate**",
            "**Approve the external system.**",
            "**Check:**",
        )
    ]
    assert steps == sorted(steps), "README: init, then trust, then approval, then check"

    # A Central Node whose certificate nothing here trusts (as a self-signed one), approval by hand.
    emu = make_emulator(approve="manual", backlog=3)
    made = _kata("init", "--dir", str(tmp_path / "etc"), "--url", emu.url)
    assert made.returncode == 0
    config_file = tmp_path / "etc" / "config.toml"
    config = ["--config", str(config_file), "--state-file", str(tmp_path / "s.json")]
    text = made.stderr.decode()
    assert text.index("trust the Central Node") < text.index("approve") < text.index("kata-events run")

    # Trust: check prints the server's fingerprint and how to pin it.
    untrusted = _kata("check", *config)
    assert untrusted.returncode == 78
    (fail,) = [line for line in untrusted.stderr.decode().splitlines() if line.startswith("FAIL")]
    assert " TLS: the server certificate was not trusted" in fail
    pin = fail.split("--pin-sha256 ", 1)[1].split(")", 1)[0]
    lines = config_file.read_text(encoding="utf-8").replace('# pin_sha256 = ""', f'pin_sha256 = "{pin}"')
    config_file.write_text(lines, encoding="utf-8")

    # Approval: check names the id and fingerprint to approve.
    unapproved = _kata("check", *config)
    assert unapproved.returncode == 78
    (fail,) = [line for line in unapproved.stderr.decode().splitlines() if line.startswith("FAIL")]
    assert fail.startswith("FAIL  approval:")
    ext_id = next(line.split()[-1] for line in text.splitlines() if "external system id" in line)
    assert ext_id in fail
    emu.approve(ext_id)

    # Check: all ok, then run streams.
    checked = _kata("check", *config)
    assert checked.returncode == 0, checked.stderr.decode()
    assert all(line.startswith("ok") for line in checked.stderr.decode().splitlines())
    run = runs.start(config, installed=True)
    run.wait_lines(3, timeout=20)
    run.send(15)
    assert run.wait(10) == 0
    assert not run.events("tls_verify_failed") and not run.events("unauthorized")
