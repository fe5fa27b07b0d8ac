"""Helpers for the disk-fault tests: a tiny real file system, an injected errno, a state-file watcher.

`small_tmpfs` mounts a tmpfs of a few hundred KiB (root only: the caller skips otherwise) that a
test can fill to the last byte and clean again. `OsFaults` drives the test-only seam in
``tests/os_faults/sitecustomize.py``: the real process gets it through PYTHONPATH, and the test
switches a fault on and off by writing its control file. `StateWatcher` reads the state file all
the time and records any moment it is not a valid state file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

SEAM_DIR = Path(__file__).parent / "os_faults"


def try_mount_tmpfs(where: Path, size: str) -> Optional[str]:
    """Mount a tmpfs of ``size`` at ``where``; None on success, else why it cannot be done."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"cannot mount a tmpfs here: {done.stderr.strip()}"
    return None


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file in ``directory`` until the file system is full; returns it."""
    path = directory / name
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(1 << 20):  # bounded: 4 GiB at most
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    break
                raise
        # A last small write takes any room a partial page left.
        for _ in range(4096):
            try:
                os.write(fd, b"\0")
            except OSError:
                break
    finally:
        os.close(fd)
    return path


class OsFaults:
    """The control file of the sitecustomize seam, and the environment that loads the seam."""

    def __init__(self, control: Path) -> None:
        self.control = control

    def env(self) -> Dict[str, str]:
        """Variables to give the process (on top of `run_helpers.clean_env`)."""
        pythonpath = os.pathsep.join(filter(None, [str(SEAM_DIR), os.environ.get("PYTHONPATH", "")]))
        return {"PYTHONPATH": pythonpath, "KATA_TEST_OS_FAULTS": str(self.control)}

    def fail(self, errno_name: str, calls: Iterable[str], under: Path) -> None:
        rule = {"errno": errno_name, "calls": list(calls), "under": str(under)}
        tmp = self.control.with_name(self.control.name + ".tmp")
        tmp.write_text(json.dumps(rule), encoding="utf-8")
        os.replace(tmp, self.control)

    def slow(self, seconds: float, calls: Iterable[str], under: Path) -> None:
        """Each of ``calls`` on a file under ``under`` takes ``seconds`` longer (then succeeds)."""
        self._write({"delay": seconds, "calls": list(calls), "under": str(under)})

    def _write(self, rule: Dict[str, object]) -> None:
        tmp = self.control.with_name(self.control.name + ".tmp")
        tmp.write_text(json.dumps(rule), encoding="utf-8")
        os.replace(tmp, self.control)

    def clear(self) -> None:
        try:
            self.control.unlink()
        except FileNotFoundError:
            pass


class StateWatcher:
    """Reads the state file every few ms in a thread; `problems` lists every invalid read."""

    def __init__(self, path: Path, every: float = 0.01) -> None:
        self.path = path
        self.every = every
        self.problems: List[str] = []
        self.tokens: List[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StateWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                continue
            self.reads += 1
            try:
                doc = json.loads(data)
                assert doc["version"] == 1 and isinstance(doc["token"], str) and doc["token"]
            except (ValueError, KeyError, AssertionError, TypeError):
                self.problems.append(repr(data[:200]))
                continue
            if not self.tokens or self.tokens[-1] != doc["token"]:
                self.tokens.append(doc["token"])


def state_file_problem(path: Path) -> str:
    """Why the state file is not a valid state file right now ("" when it is, or is absent)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    try:
        doc: Dict[str, Any] = json.loads(data)
        assert doc["version"] == 1 and isinstance(doc["progress"]["seq"], int)
        assert doc["token"] is None or (isinstance(doc["token"], str) and doc["token"])
    except (ValueError, KeyError, AssertionError, TypeError):
        return f"not a valid state file: {data[:200]!r}"
    return ""
