"""The first day with the installed command: the small traps a new user meets, each run for real.

Every test runs the ``kata-events`` console script a user runs (`run_helpers.installed_command`),
against the emulator over mutual TLS where a server is needed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from determinism import fixed_uuid
from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from run_helpers import Runs, clean_env, command, installed_command, run_args

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _kata(
    *args: str, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None, timeout: float = 60
) -> Any:
    return subprocess.run(
        [str(installed_command()), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=str(cwd) if cwd else None,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def _stop_records(stderr: str) -> List[Dict[str, Any]]:
    records = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# -- the command line -------------------------------------------------------------------------------


def test_check_help_lists_only_what_check_uses_and_accepts_a_runs_command_line(tmp_path: Path) -> None:
    shown = _kata("check", "--help")
    assert shown.returncode == 0
    # "options:" since Python 3.10, "optional arguments:" before.
    options = re.split(r"\n(?:options|optional arguments):", shown.stdout, maxsplit=1)
    usage_and_options = options[0].split("\n\n", 1)[0] + options[1]
    for run_only in (
        "--once",
        "--settle-time",
        "--ack ",
        "--ack-timeout",
        "--max-unacked",
        "--stats-interval",
    ):
        assert run_only not in usage_and_options, f"check --help lists {run_only}:\n{shown.stdout}"
    assert "--state-file" in usage_and_options and "--pin-sha256" in usage_and_options
    # A run's command line, `run` replaced by `check`, is still taken as it is (66: no such config).
    missing = tmp_path / "missing.toml"
    taken = _kata("check", "--config", str(missing), "--once", "--settle-time", "0", "--ack", "none")
    assert taken.returncode == 66, taken.stderr
    assert "unrecognized" not in taken.stderr and str(missing) in taken.stderr


@pytest.mark.parametrize("typed, meant", [("runn", "run"), ("chek", "check"), ("emulater", "emulator")])
def test_a_mistyped_command_gets_a_did_you_mean(typed: str, meant: str) -> None:
    done = _kata(typed, "--config", "x.toml")
    assert done.returncode == 64
    assert f"did you mean {meant}?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_word_like_no_command_lists_the_commands() -> None:
    done = _kata("stream")
    assert done.returncode == 64
    assert "did you mean" not in done.stderr and "run, emulator, demo, init, check" in done.stderr


# -- the state file ----------------------------------------------------------------------------------


def test_a_state_file_under_a_file_says_that_it_is_a_file(
    tmp_path: Path, emulator: Emulator, ext_id: str, client_cert: ClientCert, runs: Runs
) -> None:
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0::/root:/bin/sh\n")
    for state in (a_file / "x", a_file / "deeper" / "x"):
        run = runs.complete(run_args(emulator, ext_id, client_cert, state, "--once"), installed=True)
        assert run.returncode == 73, run.stderr_text[-2000:]
        run.assert_no_traceback()
        text = run.stderr_text
        assert f"{a_file} is a file, not a directory" in text, text[-2000:]
        assert f"make {a_file} a directory" not in text and f"make {a_file}/deeper" not in text
    assert a_file.read_text() == "root:x:0:0::/root:/bin/sh\n"


def test_check_exits_73_for_an_unwritable_state_file_as_its_docs_say(
    tmp_path: Path, emulator: Emulator, ext_id: str, client_cert: ClientCert
) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    done = _kata("check", *run_args(emulator, ext_id, client_cert, a_file / "state.token"), timeout=90)
    assert done.returncode == 73, done.stderr
    assert "Traceback" not in done.stderr and f"{a_file} is a file" in done.stderr
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Checking a set-up", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"\b73\b[^.]*state file", section), "docs/operations.md: check's exit codes omit 73"


# -- log lines -------------------------------------------------------------------------------------


def test_a_page_of_one_event_is_singular(
    tmp_path: Path, make_emulator: Callable[..., Emulator], ext_id: str, client_cert: ClientCert, runs: Runs
) -> None:
    emu = make_emulator(backlog=1)
    run = runs.complete(
        run_args(
            emu,
            ext_id,
            client_cert,
            tmp_path / "state",
            "--once",
            "--max-events",
            "5",
            "--log-level",
            "debug",
        ),
        installed=True,
    )
    assert run.returncode == 0, run.stderr_text[-2000:]
    pages = [r["message"] for r in run.events("page") if r.get("events") == 1]
    assert pages == ["page of 1 event delivered"], run.stderr_text[-2000:]
    stop = run.events("stop")[-1]["message"]
    assert re.search(r": 1 event in (1 page|[02-9]\d* pages), 1 event line written; saved: ", stop), stop


def test_the_stop_line_after_consumer_gone_names_that_reason(
    tmp_path: Path, make_emulator: Callable[..., Emulator], ext_id: str, client_cert: ClientCert
) -> None:
    emu = make_emulator(backlog=3)
    args = run_args(emu, ext_id, client_cert, tmp_path / "state", "--max-events", "10", "--max-timeout", "1")
    proc = subprocess.Popen(
        command(args, installed=True),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=str(tmp_path),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b'{"EmulatorSeq":')
        proc.stdout.close()  # the reader goes away; the next line written meets EPIPE
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            emu.add_events(1)
            time.sleep(0.2)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stderr = err.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr[-2000:]
    records = _stop_records(stderr)
    assert any(r.get("event") == "consumer_gone" for r in records), stderr[-2000:]
    stops = [r for r in records if r.get("event") == "stop"]
    assert len(stops) == 1 and stops[0]["reason"] == "consumer gone", stops
    assert "(consumer gone)" in stops[0]["message"]


# -- the emulator ------------------------------------------------------------------------------------


def _start_emulator(tmp_path: Path, env: Dict[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    log_path = tmp_path / "emulator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(installed_command()), "emulator", "--listen", "127.0.0.1:0", "--rate", "0", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = re.search(r"URL:\s+(https://127\.0\.0\.1:\d+)", text)
        if match and "Stop with Ctrl-C" in text:
            return proc, text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("emulator did not start:\n" + log_path.read_text(errors="replace"))


def test_the_emulator_keeps_its_state_under_xdg_state_home_as_run_does(tmp_path: Path) -> None:
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    proc, banner = _start_emulator(tmp_path, clean_env({"HOME": str(home), "XDG_STATE_HOME": str(xdg)}))
    try:
        expected = xdg / "kata-events" / "emulator"
        assert f"state dir:  {expected}" in banner, banner
        assert (expected / "ca.crt").is_file()
        assert not (home / ".local").exists()
    finally:
        proc.terminate()
        proc.wait(20)
    # Without XDG_STATE_HOME (or with a relative one, which the XDG spec says to ignore): ~/.local/state.
    proc, banner = _start_emulator(tmp_path, clean_env({"HOME": str(home), "XDG_STATE_HOME": "rel"}))
    try:
        assert f"state dir:  {home / '.local' / 'state' / 'kata-events' / 'emulator'}" in banner, banner
    finally:
        proc.terminate()
        proc.wait(20)


def test_docs_manual_approval_commands_approve_a_waiting_client(
    tmp_path: Path, client_cert: ClientCert, runs: Runs
) -> None:
    """docs/emulator.md's manual approval, as written there, against the real emulator command."""
    text = (ROOT / "docs" / "emulator.md").read_text(encoding="utf-8")
    section = text.split("## Manual approval", 1)[1].split("\n## ", 1)[0]
    assert "--approve manual" in section
    curl = re.search(r"^curl -X POST .*/emulator/approve\?external_system_id=.*$", section, re.M)
    assert curl, "docs/emulator.md shows no approval command"
    state_dir = tmp_path / "emulator-state"
    proc, banner = _start_emulator(
        tmp_path, clean_env(), "--approve", "manual", "--state-dir", str(state_dir)
    )
    try:
        url = re.search(r"URL:\s+(https://127\.0\.0\.1:\d+)", banner).group(1)
        ext_id = fixed_uuid()
        emu_args = [
            "--url", url, "--external-system-id", ext_id, "--cert", str(client_cert.cert_file),
            "--key", str(client_cert.key_file), "--ca-file", str(state_dir / "ca.crt"),
            "--state-file", str(tmp_path / "state"), "--stats-interval", "0", "--settle-time", "0",
        ]  # fmt: skip
        run = runs.start([*emu_args, "--once"], installed=True)
        run.wait_event("unauthorized", timeout=30)
        # The docs' command with the docs' placeholders filled in.
        line = curl.group(0)
        line = line.replace("127.0.0.1:8443", url.split("//", 1)[1])
        line = line.replace("~/.local/state/kata-events/emulator/ca.crt", str(state_dir / "ca.crt"))
        line = re.sub(r"external_system_id=[^&' ]+", f"external_system_id={ext_id}", line)
        approved = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30)
        assert approved.returncode == 0 and '"approved"' in approved.stdout, approved.stdout + approved.stderr
        run.wait_event("approved", timeout=60)
        assert run.wait(60) == 0, run.stderr_text[-2000:]
    finally:
        proc.terminate()
        proc.wait(20)


# -- the platform ------------------------------------------------------------------------------------

_NO_POSIX = '''\
"""Test-only: this Python has no fcntl or termios, as on Windows."""
import sys


class _NoPosix:
    def find_spec(self, name, path=None, target=None):
        if name in ("fcntl", "termios"):
            raise ImportError(f"No module named {name!r}")
        return None


sys.modules.pop("fcntl", None)
sys.modules.pop("termios", None)
sys.meta_path.insert(0, _NoPosix())
'''


@pytest.mark.parametrize("subcommand", ["run", "check", "demo", "init", "emulator"])
def test_a_platform_without_fcntl_gets_one_sentence_and_exit_69(tmp_path: Path, subcommand: str) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_NO_POSIX, encoding="utf-8")
    env = clean_env({"PYTHONPATH": str(shim)})
    proof = subprocess.run(
        [str(installed_command().with_name("python")), "-c", "import fcntl"], env=env, capture_output=True
    )
    assert proof.returncode != 0, "the shim did not hide fcntl"
    done = _kata(subcommand, "--config", str(tmp_path / "config.toml"), env=env, cwd=tmp_path)
    assert done.returncode == 69, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "kata-events runs on Linux" in lines[0] and "fcntl" in lines[0], lines
    # --version still answers: the package is installed, only the platform is wrong.
    assert _kata("--version", env=env).returncode == 0
