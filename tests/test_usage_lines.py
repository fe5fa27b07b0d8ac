"""A mistyped command, an unsupported platform and a usage error are each one ``fatal`` log line,
like every other fatal error of a run: JSON by default (what a shipper logs next to the rest), and
readable text with --log-format text (the usage on its own lines, not escaped)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from run_helpers import clean_env, installed_command

pytestmark = pytest.mark.timeout(60)


def _kata(*args: str, env: Optional[Dict[str, str]] = None) -> Any:
    return subprocess.run(
        [str(installed_command()), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def _one_fatal(stderr: str) -> Dict[str, Any]:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    record = json.loads(lines[0])
    assert record["event"] == "fatal" and record["level"] == "error", record
    return record


def test_an_unknown_command_is_one_fatal_json_line() -> None:
    done = _kata("runn", "--config", "x.toml")
    assert done.returncode == 64 and done.stdout == ""
    record = _one_fatal(done.stderr)
    assert record["exit_code"] == 64 and record["reason"] == "usage"
    assert "unknown command 'runn': did you mean run?" in record["message"]
    assert "kata-events --help" in record["message"]
    assert record["usage"].startswith("usage: kata-events")


def test_an_unknown_command_follows_the_log_format_asked_for() -> None:
    done = _kata("runn", "--log-format", "text")
    assert done.returncode == 64
    assert done.stderr.count("\n") == 1, done.stderr
    assert " ERROR fatal: unknown command 'runn': did you mean run?" in done.stderr
    # The variable a service file sets is honoured too.
    by_env = _kata("runn", env=clean_env({"KATA_EVENTS_LOG_FORMAT": "text"}))
    assert by_env.returncode == 64 and " ERROR fatal: unknown command" in by_env.stderr


def test_a_usage_error_in_text_shows_its_usage_readably() -> None:
    done = _kata("run", "--log-format", "text", "--max-evnts", "5")
    assert done.returncode == 64
    first, *rest = done.stderr.rstrip("\n").split("\n")
    assert " ERROR fatal: unrecognized arguments: --max-evnts 5: did you mean --max-events?" in first
    assert "\\n" not in done.stderr, done.stderr
    # The usage below the line, as argparse prints it, indented: every flag on a line of its own text.
    assert rest and rest[0].startswith("  usage: kata-events run"), done.stderr
    assert any("--max-events N" in line for line in rest)
    # One pointer to --help, not two.
    assert first.count("--help") == 1, first
    # In JSON the usage is a field of the one line.
    as_json = _one_fatal(_kata("run", "--max-evnts", "5").stderr)
    assert as_json["usage"].startswith("usage: kata-events run") and "\n" in as_json["usage"]


_NO_POSIX = """
import sys

class _NoPosix:
    def find_spec(self, name, path=None, target=None):
        if name in ("fcntl", "termios"):
            raise ImportError(f"No module named {name!r}")
        return None

sys.modules.pop("fcntl", None)
sys.modules.pop("termios", None)
sys.meta_path.insert(0, _NoPosix())
"""


def test_an_unsupported_platform_is_one_fatal_json_line_with_exit_69(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_NO_POSIX, encoding="utf-8")
    done = _kata("run", "--config", str(tmp_path / "c.toml"), env=clean_env({"PYTHONPATH": str(shim)}))
    assert done.returncode == 69, done.stderr
    record = _one_fatal(done.stderr)
    assert record["exit_code"] == 69 and record["reason"] == "platform"
    assert "kata-events runs on Linux" in record["message"] and "fcntl" in record["message"]
