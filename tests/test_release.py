"""The release: the sdist and wheel a collector box is given, and their install with no network.

`python -m build` runs on a copy of the tree (what a clean clone holds, without venvs or build
left-overs), and `twine check --strict` holds both files to PyPI's metadata rules. The offline
test makes a wheelhouse the way docs/install.md says (`pip wheel` of the project, so its
dependencies come from pyproject.toml, whatever they are), then, in a network namespace that has
only loopback (`unshare -rn`), makes a fresh venv, installs with `--no-index --find-links` and runs
`kata-events demo --events 5` from it. Both need the network once, for PyPI (or the index pip is
configured with), as the docs' own first step does.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict

import pytest

from run_helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent

_NOT_RELEASED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    # Coverage's data files, written (and combined away) by the processes of a --cov run meanwhile.
    ".coverage*",
)


def _tree(tmp_path: Path) -> Path:
    """A copy of the source tree as a clean clone has it."""
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=_NOT_RELEASED)
    return tree


def _offline_env(home: Path) -> Dict[str, str]:
    """An environment where pip reads no configuration: only the wheelhouse named on its command line."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("PIP_")}
    # PIP_COMPILE=0: the installed files are the same; byte-compiling all of them (the demo below
    # imports a few) is most of the install's CPU, which the suite pays on three interpreters in CI.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_COMPILE="0", HOME=str(home))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def test_build_makes_an_sdist_and_a_wheel_that_twine_check_strict_accepts(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(tree)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0 and checked.stdout.count("PASSED") == 2, checked.stdout + checked.stderr

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(wheel.read(metadata_name).decode("utf-8"))
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
        assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    classifiers = metadata.get_all("Classifier")
    assert "Operating System :: POSIX :: Linux" in classifiers
    for minor in range(9, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers, classifiers
    assert metadata["License-Expression"] == "MIT" and metadata["Requires-Python"] == ">=3.9"
    # No Project-URL: the project has no public home yet (pyproject says why).
    assert metadata["Keywords"] and not metadata.get_all("Project-URL")

    with tarfile.open(sdists[0]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    # A collector box given the sdist also gets the docs, the shippers' examples and the tests.
    for needed in ("LICENSE", "docs/install.md", "syslog-ng.conf.example", "tests/run_helpers.py"):
        assert needed in members, sorted(members)


def test_a_wheelhouse_installs_and_runs_with_no_network(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare (util-linux): .ci/run installs it")
    tree = _tree(tmp_path)
    wheelhouse = tmp_path / "wheelhouse"
    # With the network: the project's wheel and every wheel it needs on this Python and platform.
    made = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheelhouse), str(tree)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert any(wheelhouse.glob("kata_events-*.whl")) and any(wheelhouse.glob("msgspec-*.whl"))

    venv = tmp_path / "offline-venv"
    # Inside the namespace: loopback up (the demo's emulator listens there), no route out, proven by
    # a connection that fails; then the docs' offline steps.
    script = (
        "set -e\n"
        "ip link set lo up\n"
        '"$PY" -c "import socket\n'
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 443), timeout=3)\n"
        "except OSError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('the namespace reaches the network')\"\n"
        '"$PY" -m venv "$VENV"\n'
        '"$VENV/bin/pip" install -q --no-index --find-links "$WHEELHOUSE" kata-events\n'
        'exec "$VENV/bin/kata-events" demo --events 5\n'
    )
    env = _offline_env(tmp_path)
    env.update(PY=sys.executable, VENV=str(venv), WHEELHOUSE=str(wheelhouse))
    done = subprocess.run(
        [unshare, "-rn", "sh", "-c", script],
        cwd=str(tmp_path),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=240,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    if done.returncode != 0 and b"unshare" in done.stderr[:300] and not venv.exists():
        pytest.fail(f"unshare -rn cannot make a network namespace here: {stderr[-500:]}")
    assert done.returncode == 0, stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith(b'{"EmulatorSeq":') for line in lines), lines
    assert (venv / "bin" / "kata-events").exists()
