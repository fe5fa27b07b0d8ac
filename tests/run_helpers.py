"""Helpers for the acceptance tests of ``kata-events run``: the real process against an emulator.

`KataRun` starts ``python -m kata_events run ...`` with stdout on a pipe that a thread reads all the
time (or on a regular file), stderr parsed as JSON log lines by another thread, and offers waits for
log events and output lines, signals, kill -9 and the exit code. `run_args` builds the argument list
for an emulator over mutual TLS. Nothing here fakes the network: the process speaks real TLS to a
real socket.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from emulator_helpers import ClientCert
from kata_events.emulator import Emulator

_SEQ = re.compile(rb'^\{"EmulatorSeq":(\d+),')

#: What a kill -9 or a stop may send again per restart, in every mode (docs/delivery.md, "The
#: bound, by count"; kata_events.delivery.policies.RESEND_BOUND).
RESEND_BOUND = 3_000

#: Variables that would change what the process does behind the test's back.
_DROPPED_ENV = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The test's environment without KATA_EVENTS_*, CA-bundle and proxy variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KATA_EVENTS_") and k not in _DROPPED_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def client_args(urls: Union[str, Sequence[str]], ext_id: str, cert: Any, state_file: Any) -> List[str]:
    """``--url`` (once for each of ``urls``), ``--external-system-id``, ``--cert``, ``--key`` and
    ``--state-file``: what ``run`` and ``check`` need to reach a Central Node at all."""
    args: List[str] = []
    for url in [urls] if isinstance(urls, str) else urls:
        args += ["--url", url]
    return args + [
        "--external-system-id",
        ext_id,
        "--cert",
        str(cert.cert_file),
        "--key",
        str(cert.key_file),
        "--state-file",
        str(state_file),
    ]


def run_args(
    emu: Emulator,
    ext_id: str,
    cert: ClientCert,
    state_file: Union[Path, str],
    *extra: str,
    ca_file: bool = True,
    stats_interval: int = 0,
    settle_time: Optional[float] = 0.0,
) -> List[str]:
    """``run`` arguments for ``emu`` over mutual TLS, then ``extra``.

    ``settle_time`` is 0 unless a test asks for one (None: the product's default): on a pipe a
    ``--once`` run would otherwise wait that long after its last line, which only the tests of the
    settle rule are about. A later ``--settle-time`` in ``extra`` wins.
    """
    args = client_args(emu.url, ext_id, cert, state_file) + ["--stats-interval", str(stats_interval)]
    if ca_file:
        args += ["--ca-file", str(emu.ca_file)]
    if settle_time is not None:
        args += ["--settle-time", f"{settle_time:g}"]
    return args + list(extra)


def command(args: Sequence[str], installed: bool = False) -> List[str]:
    """The argv of ``kata-events run`` with ``args``: through this interpreter, or ``installed``
    through the console script a user runs."""
    if installed:
        return [str(installed_command()), "run", *args]
    return [sys.executable, "-m", "kata_events", "run", *args]


def check(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 40) -> Any:
    """Run ``kata-events check`` with ``args`` to its end (stdin closed); the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "kata_events", "check", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def installed_command() -> Path:
    """The ``kata-events`` console script of this interpreter's environment (skips if absent)."""
    import pytest

    script = Path(sys.executable).with_name("kata-events")
    if not script.exists():
        pytest.skip(f"no kata-events console script next to {sys.executable}: pip install -e . first")
    return script


def seq_of(line: bytes) -> int:
    """The EmulatorSeq of an event line (every emulator event starts with it)."""
    match = _SEQ.match(line)
    if not match:
        raise AssertionError(f"not an emulator event line: {line[:120]!r}")
    return int(match.group(1))


def split_lines(data: bytes, allow_partial_tail: bool = False) -> List[bytes]:
    """Lines of ``data``; a last line without its newline is an error unless ``allow_partial_tail``
    (then it is dropped: kill -9 can land in the middle of a write larger than the pipe's atomic size).
    """
    if not data:
        return []
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail and not allow_partial_tail:
        raise AssertionError(f"output ends with a partial line: {tail[:120]!r}")
    return lines


def partial_tail(data: bytes) -> bytes:
    """What follows the last newline (empty when the output ends with a whole line)."""
    return data[data.rfind(b"\n") + 1 :]


def log_records(stderr: bytes) -> List[Dict[str, Any]]:
    """The JSON log lines of a process's stderr that carry an event (other lines are skipped)."""
    records = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record:
            records.append(record)
    return records


def after_torn_tail(data: bytes, torn: bool, label: str) -> bytes:
    """A run's output into a regular file after the previous run's kill left it ending mid-line
    (``torn``): the run first ends that fragment with a newline (docs/delivery.md, `torn_tail`),
    never gluing an event onto it; its own lines follow, returned here."""
    if not torn:
        return data
    assert data.startswith(b"\n"), f"{label}: the torn last line was not ended before the next event"
    return data[1:]


def assert_exact_events(emu: Emulator, lines: Iterable[bytes], first: int, last: int) -> None:
    """``lines`` are exactly the server's bytes of events ``first``..``last``, in order."""
    lines = list(lines)
    assert len(lines) == last - first + 1, f"{len(lines)} lines for events {first}..{last}"
    for expected_seq, line in zip(range(first, last + 1), lines):
        if line != emu.event_bytes(expected_seq):
            got = seq_of(line) if _SEQ.match(line) else None
            raise AssertionError(
                f"line for event {expected_seq} differs from the server's bytes (line has seq {got}): "
                f"{line[:160]!r}"
            )


def _shown(record: Dict[str, Any]) -> str:
    """A log record as the process wrote it (without the arrival time the reader adds)."""
    return json.dumps({k: v for k, v in record.items() if k != "_at"}, ensure_ascii=False)


class KataRun:
    """One running ``kata-events run`` process.

    ``stdout_file``: a path to append stdout to (a regular file) instead of a pipe read by a thread.
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: Union[Path, str],
        *,
        stdout_file: Optional[Union[Path, str]] = None,
        stdin: Any = subprocess.DEVNULL,
        env: Optional[Dict[str, str]] = None,
        hold_stdout: bool = False,
        installed: bool = False,
    ) -> None:
        self.args = list(args)
        self.installed = installed
        # Cleared: the stdout reader waits, so the pipe fills up (a stalled consumer).
        self._reading = threading.Event()
        if not hold_stdout:
            self._reading.set()
        self._out = bytearray()
        self._logs: List[Dict[str, Any]] = []
        self._other_stderr: List[str] = []
        self._cond = threading.Condition()
        self._stdout_file = Path(stdout_file) if stdout_file is not None else None
        self.started = time.monotonic()
        if self._stdout_file is not None:
            with open(self._stdout_file, "ab") as out_handle:
                self.proc = self._popen(cwd, stdin, out_handle, env)
        else:
            self.proc = self._popen(cwd, stdin, subprocess.PIPE, env)
        self.exited_at: Optional[float] = None
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True)]
        if self.proc.stdout is not None:
            self._threads.append(threading.Thread(target=self._read_stdout, daemon=True))
        for thread in self._threads:
            thread.start()

    def _popen(self, cwd: Union[Path, str], stdin: Any, stdout: Any, env: Optional[Dict[str, str]]) -> Any:
        return subprocess.Popen(
            command(self.args, self.installed),
            cwd=str(cwd),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env if env is not None else clean_env(),
        )

    # -- readers ------------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            self._reading.wait()
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            with self._cond:
                self._out += chunk
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            with self._cond:
                if isinstance(record, dict) and "event" in record:
                    record["_at"] = time.monotonic()
                    self._logs.append(record)
                else:
                    self._other_stderr.append(text)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def release_stdout(self) -> None:
        """Let the stdout reader go on (after ``hold_stdout=True``)."""
        self._reading.set()

    def unread_stdout(self) -> int:
        """Bytes waiting in the stdout pipe (FIONREAD on the test's end)."""
        assert self.proc.stdout is not None
        buf = array.array("i", [0])
        fcntl.ioctl(self.proc.stdout.fileno(), termios.FIONREAD, buf, True)
        return buf[0]

    # -- what it said -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> bytes:
        """Everything on stdout so far (pipe mode), or the file's content."""
        if self._stdout_file is not None:
            return self._stdout_file.read_bytes()
        with self._cond:
            return bytes(self._out)

    def lines(self, allow_partial_tail: bool = False) -> List[bytes]:
        return split_lines(self.output, allow_partial_tail)

    def seqs(self, allow_partial_tail: bool = False) -> List[int]:
        return [seq_of(line) for line in self.lines(allow_partial_tail)]

    @property
    def logs(self) -> List[Dict[str, Any]]:
        with self._cond:
            return list(self._logs)

    def events(self, name: str) -> List[Dict[str, Any]]:
        return [r for r in self.logs if r.get("event") == name]

    @property
    def other_stderr(self) -> str:
        """stderr lines that are not JSON log events (plain messages, tracebacks)."""
        with self._cond:
            return "\n".join(self._other_stderr)

    @property
    def stderr_text(self) -> str:
        with self._cond:
            parts = [_shown(r) for r in self._logs]
            return "\n".join(parts + self._other_stderr)

    def assert_no_traceback(self) -> None:
        text = self.stderr_text
        assert "Traceback" not in text, text[-3000:]

    # -- waiting ------------------------------------------------------------------------------------

    def _wait_until(self, ready: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = ready()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {what}; exit code {self.proc.poll()}; "
                        f"stderr tail:\n{self._stderr_tail_locked()}"
                    )
                self._cond.wait(min(left, 0.1))

    def _stderr_tail_locked(self) -> str:
        recent = [_shown(r)[:400] for r in self._logs[-15:]]
        return "\n".join(recent + self._other_stderr[-15:])

    def wait_event(
        self, name: str, timeout: float = 15.0, where: Optional[Callable[[Dict[str, Any]], bool]] = None
    ) -> Dict[str, Any]:
        """The first log event called ``name`` (and matching ``where``), waiting up to ``timeout``."""

        def find() -> Optional[Dict[str, Any]]:
            for record in self._logs:
                if record.get("event") == name and (where is None or where(record)):
                    return record
            return None

        return self._wait_until(find, timeout, f"log event {name!r}")

    def wait_lines(self, count: int, timeout: float = 15.0) -> None:
        """Wait until stdout (pipe mode) holds at least ``count`` complete lines."""
        self._wait_until(lambda: self._out.count(b"\n") >= count, timeout, f"{count} lines on stdout")

    # -- ending -------------------------------------------------------------------------------------

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> int:
        """SIGKILL, then wait for the readers to take everything left in the pipes; the exit code."""
        self.proc.send_signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit and for the readers to reach EOF; returns the exit code."""
        code = self.proc.wait(timeout)
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        for thread in self._threads:
            thread.join(timeout)
        return code

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def stop(self) -> None:
        """End the process if it still runs (test cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._reading.set()
        try:
            self.wait(10)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def fingerprint_of_pem_file(path: Union[Path, str]) -> str:
    """SHA-256 (hex) of the certificate in a PEM file."""
    from kata_events import certs

    return certs.sha256_fingerprint(Path(path).read_bytes())


class Runs:
    """Starts `KataRun` processes in one directory and ends the ones still running at cleanup."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: List[KataRun] = []

    def start(self, args: Sequence[str], **kwargs: Any) -> KataRun:
        run = KataRun(args, self.cwd, **kwargs)
        self.started.append(run)
        return run

    def complete(self, args: Sequence[str], timeout: float = 60.0, **kwargs: Any) -> KataRun:
        """Start, wait for the exit (the test fails if it takes longer than ``timeout``)."""
        run = self.start(args, **kwargs)
        try:
            run.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"kata-events run did not exit within {timeout} s; stderr:\n{run.stderr_text[-3000:]}"
            ) from None
        return run

    def close(self) -> None:
        for run in self.started:
            run.stop()
