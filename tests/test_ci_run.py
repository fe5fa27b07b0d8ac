"""`.ci/run` itself: a lint or formatting error fails it before any test suite starts.

The script runs from a copy of itself with stand-in interpreters and tools on the PATH (each only
records that it was called), so the test checks the script's own sequencing in a second, without
building venvs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent

_FAKE_PYTHON3 = """#!/bin/sh
# python3 as .ci/run uses it: --version, and -m venv DIR making stand-in pip, ruff and python.
case "$1" in
  --version) echo "Python 3.11.0"; exit 0 ;;
  -m) dir="$3"; mkdir -p "$dir/bin"
      printf '#!/bin/sh\\nexit 0\\n' > "$dir/bin/pip"
      printf '#!/bin/sh\\necho "ruff $*" >> "%(calls)s"; [ "$1" != "%(failing)s" ]\\n' > "$dir/bin/ruff"
      printf '#!/bin/sh\\necho "suite $*" >> "%(calls)s"\\necho "== test session starts =="\\n' \\
        > "$dir/bin/python"
      chmod +x "$dir/bin/pip" "$dir/bin/ruff" "$dir/bin/python"; exit 0 ;;
esac
exit 1
"""

_FAKE_EXTRA = """#!/bin/sh
# An extra interpreter: answers .ci/run's version questions through the real one, records a suite.
case "$1" in
  -c) exec "%(python)s" "$@" ;;
  -m) echo "extra suite" >> "%(calls)s"; exit 1 ;;
esac
exit 1
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _ci_run(tmp_path: Path, failing: str) -> Tuple[subprocess.CompletedProcess, List[str]]:
    """Run a copy of .ci/run whose `ruff <failing>` fails ("none": nothing fails); its calls."""
    tree = tmp_path / "tree"
    (tree / ".ci").mkdir(parents=True)
    script = tree / ".ci" / "run"
    script.write_text((ROOT / ".ci" / "run").read_text(encoding="utf-8"), encoding="utf-8")
    script.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "python3", _FAKE_PYTHON3 % {"calls": calls, "failing": failing})
    extras = [
        _executable(tmp_path / f"python3.{minor}", _FAKE_EXTRA % {"python": sys.executable, "calls": calls})
        for minor in (9, 13)
    ]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["KATA_CI_PYTHONS"] = " ".join(str(p) for p in extras)
    done = subprocess.run(
        ["bash", str(script)], cwd=str(tree), env=env, capture_output=True, text=True, timeout=60
    )
    return done, calls.read_text(encoding="utf-8").splitlines()


def test_a_lint_error_fails_ci_before_any_suite_starts(tmp_path: Path) -> None:
    done, calls = _ci_run(tmp_path, failing="check")
    assert done.returncode != 0
    assert calls == ["ruff check ."], calls
    assert "lint or formatting failed" in done.stderr


def test_a_formatting_error_fails_ci_before_any_suite_starts(tmp_path: Path) -> None:
    done, calls = _ci_run(tmp_path, failing="format")
    assert done.returncode != 0
    assert calls == ["ruff check .", "ruff format --check ."], calls


def test_clean_lint_runs_the_suite_then_every_interpreter(tmp_path: Path) -> None:
    done, calls = _ci_run(tmp_path, failing="none")
    assert calls == ["ruff check .", "ruff format --check .", "suite -m pytest", "extra suite", "extra suite"]
    # The stand-in extra interpreters fail to make their venv: CI fails, and says which.
    assert done.returncode != 0 and done.stdout.count("FAILED") == 2, done.stdout
