"""The documented ``kata-events run | nc -N …`` pipeline ends when kata-events ends.

The command is taken from docs/shippers.md as written, with only the SIEM's address and the
options changed, and run by ``sh -c`` with the real ``nc`` (Debian's netcat-openbsd) against a
TCP receiver that, as SIEMs' TCP inputs do, closes its side at the end of the stream. SIGTERM goes
to kata-events alone; the whole pipeline must end with it (in ~0.05 s; the test allows 10).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List

import pytest

from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from run_helpers import clean_env, installed_command, run_args, seq_of

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("nc") is None, reason="needs nc (netcat-openbsd; .ci/run installs it)"),
]

ROOT = Path(__file__).resolve().parent.parent


class _Receiver:
    """A TCP receiver: reads one connection to its end, then closes it, as a SIEM's input does."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.data = bytearray()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.data += chunk
        self.ended.set()

    def close(self) -> None:
        self.sock.close()


def _documented_pipeline() -> str:
    text = (ROOT / "docs" / "shippers.md").read_text(encoding="utf-8")
    match = re.search(r"^kata-events run --config \S+ \| nc .*$", text, re.M)
    assert match, "docs/shippers.md shows no `kata-events run | nc` pipeline"
    return match.group(0)


def _children(pid: int) -> List[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        return [int(p) for p in fh.read().split()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def test_the_documented_nc_pipeline_ends_within_a_second_of_sigterm(
    tmp_path: Path, make_emulator: Callable[..., Emulator], ext_id: str, client_cert: ClientCert
) -> None:
    emu = make_emulator(backlog=20, rate=20)
    receiver = _Receiver()
    documented = _documented_pipeline()
    args = run_args(emu, ext_id, client_cert, tmp_path / "state", "--max-timeout", "1")
    line = documented.replace("kata-events run --config /etc/kata-events/config.toml", "")
    line = line.replace("siem.example.local 9000", f"127.0.0.1 {receiver.port}")
    script = shlex.join([str(installed_command()), "run", *args]) + line
    shell = subprocess.Popen(
        ["sh", "-c", script],
        cwd=str(tmp_path),
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while receiver.data.count(b"\n") < 25:
            assert time.monotonic() < deadline, "no events reached the receiver through nc"
            assert shell.poll() is None, shell.stderr.read().decode("utf-8", "replace")[-2000:]
            time.sleep(0.05)
        kata = [p for p in _children(shell.pid) if " run " in _cmdline(p)]
        assert len(kata) == 1, [_cmdline(p) for p in _children(shell.pid)]
        os.kill(kata[0], signal.SIGTERM)
        sent = time.monotonic()
        try:
            shell.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the pipeline `{documented}` did not end within 10 s of kata-events' SIGTERM "
                f"(still running: {[_cmdline(p) for p in _children(shell.pid)]})"
            ) from None
        took = time.monotonic() - sent
    finally:
        if shell.poll() is None:
            for pid in _children(shell.pid):
                os.kill(pid, signal.SIGKILL)
            shell.kill()
            shell.wait()
        receiver.close()
    stderr = shell.stderr.read().decode("utf-8", "replace")
    assert took < 10, f"the pipeline ended {took:.2f} s after kata-events' SIGTERM"
    assert "Traceback" not in stderr
    assert receiver.ended.wait(5), "the receiver never saw the end of the stream"
    # Everything that went through nc arrived whole: complete event lines, in order, no gap.
    data = bytes(receiver.data)
    assert data.endswith(b"\n")
    seqs = [seq_of(event) for event in data.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))
