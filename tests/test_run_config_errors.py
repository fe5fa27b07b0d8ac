"""Acceptance: a missing file (certificate, key, CA, config) ends `kata-events run` with exit 66
naming the path before any connection is made; a bad value ends it with 78 listing every problem;
a usage error ends it with 64. Each is one `fatal` JSON log line carrying the exit code (readable
text with --log-format text), never a traceback nor a line outside the log format.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator, List

import pytest

from run_helpers import KataRun, run_args


def _fatal(run: KataRun, code: int) -> dict:
    """The run's one log line: a `fatal` event with ``code``; nothing else on stderr."""
    assert run.returncode == code, run.stderr_text[-3000:]
    assert [r["event"] for r in run.logs] == ["fatal"], run.stderr_text[-3000:]
    assert not run.other_stderr.strip(), run.other_stderr
    fatal = run.logs[0]
    assert fatal["exit_code"] == code and fatal["level"].upper() == "ERROR"
    return fatal


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that records whether anyone connected."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def _args_towards(listener: socket.socket, make_emulator, cert, ext_id: str, state: Path) -> List[str]:
    """Normal arguments, but the URL points at ``listener`` (which speaks no TLS at all)."""
    emu = make_emulator()
    args = run_args(emu, ext_id, cert, state, "--once")
    port = listener.getsockname()[1]
    return [f"https://127.0.0.1:{port}" if a == emu.url else a for a in args]


def _replace(args: List[str], flag: str, value: str) -> List[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flag", ["--cert", "--key", "--ca-file", "--config"])
def test_a_missing_file_exits_66_naming_it_before_any_connection(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, listener, flag
):
    cert = make_client_cert("missing")
    args = _args_towards(listener, make_emulator, cert, ext_id, tmp_path / "s.json")
    missing = tmp_path / "nowhere" / f"missing{flag.replace('-', '_')}.pem"
    args = args + [flag, str(missing)] if flag == "--config" else _replace(args, flag, str(missing))
    run = runs.complete(args, timeout=20)
    fatal = _fatal(run, 66)
    assert str(missing) in fatal["message"] and fatal["reason"] == "missing file"
    run.assert_no_traceback()
    assert run.output == b""
    assert not _connected(listener), "the process connected before checking its files"
    assert not (tmp_path / "s.json").exists()


@pytest.mark.timeout(30)
def test_bad_values_exit_78_listing_each(make_emulator, make_client_cert, ext_id, runs, tmp_path, listener):
    cert = make_client_cert("badvalue")
    config = tmp_path / "kata-events.toml"
    config.write_text('max_timeout = 301\nlog_format = "xml"\n')
    args = _args_towards(listener, make_emulator, cert, ext_id, tmp_path / "s.json")
    run = runs.complete(args + ["--config", str(config), "--max-events", "0"], timeout=20)
    fatal = _fatal(run, 78)
    assert len(fatal["problems"]) == 3, fatal
    for name in ("max_events", "max_timeout", "log_format"):
        assert name in fatal["message"], f"{name} is not named in:\n{fatal['message']}"
        assert sum(name + " =" in problem for problem in fatal["problems"]) == 1, fatal["problems"]
    run.assert_no_traceback()
    assert run.output == b""
    assert not _connected(listener)


@pytest.mark.timeout(30)
def test_an_unknown_config_key_exits_78_with_a_suggestion(
    make_emulator, make_client_cert, ext_id, runs, tmp_path, listener
):
    cert = make_client_cert("badkey")
    config = tmp_path / "kata-events.toml"
    config.write_text("max_event = 100\n")
    args = _args_towards(listener, make_emulator, cert, ext_id, tmp_path / "s.json")
    run = runs.complete(args + ["--config", str(config)], timeout=20)
    fatal = _fatal(run, 78)
    assert "unknown key 'max_event'" in fatal["message"] and "did you mean max_events?" in fatal["message"]
    assert fatal["reason"] == "configuration"
    run.assert_no_traceback()
    assert not _connected(listener)


@pytest.mark.timeout(30)
def test_a_usage_error_is_a_fatal_line_with_the_usage(runs, tmp_path) -> None:
    run = runs.complete(["--confg", "x"], timeout=20)
    fatal = _fatal(run, 64)
    assert "unrecognized arguments: --confg x: did you mean --config?" in fatal["message"]
    assert fatal["usage"].startswith("usage: kata-events run") and fatal["reason"] == "usage"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["flag", "variable", "file"])
def test_with_log_format_text_a_configuration_error_is_a_readable_line(runs, tmp_path, where) -> None:
    config = tmp_path / "kata-events.toml"
    config.write_text("max_event = 100\n" + ('log_format = "text"\n' if where == "file" else ""))
    args = ["--config", str(config)] + (["--log-format", "text"] if where == "flag" else [])
    env = {"KATA_EVENTS_LOG_FORMAT": "text"} if where == "variable" else None
    from run_helpers import clean_env

    run = runs.complete(args, timeout=20, env=clean_env(env))
    assert run.returncode == 78
    assert run.logs == []
    lines = run.other_stderr.strip().splitlines()
    assert " ERROR fatal: invalid configuration" in lines[0] and "exit_code=78" in run.other_stderr, lines
    assert "did you mean max_events?" in run.other_stderr
