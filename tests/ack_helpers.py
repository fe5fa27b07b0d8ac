"""An rsyslog improg-like consumer for the acknowledgement tests, and ways to read the emitter's state.

`ImprogConsumer` starts the real ``kata-events run`` with stdin and stdout pipes and speaks to it
the way rsyslog's improg (``confirmMessages="on"``) does: ``START\\n`` once, then ``ACK\\n`` for every
line it has read, written as each line completes (pipelined: it never waits for the next line
before acknowledging the previous one), and at shutdown improg's ``afterRun``/``terminateChild``
sequence: ``STOP\\n``, SIGTERM (``signalOnClose="on"``), close the pipe from the child, close the
pipe to the child, poll for the exit every 10 ms for ``closeTimeout`` (200 ms), then SIGKILL.
Variants (``ACK <n>`` batches, acknowledging only the first k lines, no acknowledgement at all,
SIGTERM before STOP) are options.

The emitter's committed position is learned from the emulator: every continuation token it hands
out maps to the EmulatorSeq the next page starts at (`TokenMap`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from run_helpers import clean_env, command, run_args, seq_of

#: The shipped example's closeTimeout (rsyslog-improg.conf.example), and the pace at which improg
#: looks for the child's exit. improg's own default, 200 ms, is a duration on a loaded machine: the
#: median-of-runs test in test_ack_improg.py holds the stop to it.
CLOSE_TIMEOUT = 5.0
WAITPID_POLL = 0.01


def run_argv(
    emulator: Emulator,
    cert: ClientCert,
    ext_id: str,
    state_file: Path,
    *extra: str,
    max_events: int = 100,
    max_timeout: int = 1,
) -> List[str]:
    """``kata-events run`` against ``emulator`` over mutual TLS, JSON logs on stderr."""
    limits = ("--max-events", str(max_events), "--max-timeout", str(max_timeout), "--log-format", "json")
    return command(run_args(emulator, ext_id, cert, state_file, *limits, *extra, stats_interval=60))


def read_logs(path: Path) -> List[Dict[str, Any]]:
    """The JSON log lines the emitter wrote on stderr (anything else fails the test)."""
    records = []
    for raw in path.read_bytes().splitlines():
        if raw.strip():
            records.append(json.loads(raw))
    return records


def events_named(records: Iterable[Dict[str, Any]], name: str) -> List[Dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


def state_token(path: Path) -> Optional[str]:
    """The token in the state file, or None when there is no file (yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(data).get("token")


class TokenMap:
    """Remembers, for every token the emulator handed out, the EmulatorSeq its next page starts at.

    The emulator keeps only its newest tokens per subscription, so `refresh` is called often (by a
    poller) to remember them all.
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._known: Dict[str, int] = {}

    def refresh(self) -> None:
        with self.emulator._lock:
            snapshot = dict(self.emulator._tokens)
        for token, (_sub, position) in snapshot.items():
            self._known[token] = position

    def position(self, token: str) -> int:
        """The EmulatorSeq the page after ``token`` starts at: everything below it is committed."""
        if token not in self._known:
            self.refresh()
        return self._known[token]


@dataclass
class StopResult:
    """How the emitter ended under improg's shutdown sequence."""

    returncode: int
    #: From writing STOP (or the signal, whichever came first) to the process's exit, in ms.
    stop_to_exit_ms: float
    killed: bool


class ImprogConsumer:
    """Runs ``argv`` with stdin/stdout pipes and acknowledges the lines it reads, as improg does.

    ``ack``: ``"each"`` (one ``ACK\\n`` write per line, improg's bytes), ``"batch"`` (one ``ACK <n>``
    per chunk read), or ``"none"``. ``ack_limit``: acknowledge only the first that many lines.
    ``acked`` counts acknowledgements *before* they are written, so the emitter can never have
    seen more than ``acked`` at any moment.
    """

    def __init__(
        self,
        argv: List[str],
        stderr_path: Path,
        *,
        ack: str = "each",
        ack_limit: Optional[int] = None,
        say_start: bool = True,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        assert ack in ("each", "batch", "none")
        self.argv = argv
        self.stderr_path = stderr_path
        self.ack_mode = ack
        self.ack_limit = ack_limit
        self.say_start = say_start
        self.env = clean_env() if env is None else env
        self.lines: List[bytes] = []
        self.acked = 0
        self.eof = False
        self.proc: Optional[subprocess.Popen] = None
        self._partial = b""
        self._halt = threading.Event()
        self._paused = threading.Event()
        self._write_lock = threading.Lock()
        self._got_line = threading.Condition()
        self._reader: Optional[threading.Thread] = None
        self._stdin_fd = -1
        self._stdout_fd = -1
        self._stdin_broken = False

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> ImprogConsumer:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                self.argv, stdin=stdin_r, stdout=stdout_w, stderr=stderr, env=self.env, close_fds=True
            )
        os.close(stdin_r)
        os.close(stdout_w)
        self._stdin_fd, self._stdout_fd = stdin_w, stdout_r
        if self.say_start:
            self.send(b"START\n")
        self._reader = threading.Thread(target=self._read_loop, name="improg-reader", daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> ImprogConsumer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- stdin ------------------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write raw bytes to the emitter's stdin; False once it cannot take them (it is gone)."""
        with self._write_lock:
            if self._stdin_broken or self._stdin_fd < 0:
                return False
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._stdin_fd, view) :]
            except OSError:
                self._stdin_broken = True
                return False
            return True

    def close_stdin(self) -> None:
        """End of input for the emitter (stdout stays open and is still read)."""
        with self._write_lock:
            if self._stdin_fd >= 0:
                os.close(self._stdin_fd)
                self._stdin_fd = -1

    def ack(self, n: int, batch: bool = False) -> None:
        """Acknowledge ``n`` more lines by hand (``ACK\\n`` each, or one ``ACK <n>``)."""
        if n <= 0:
            return
        with self._write_lock:
            self.acked += n
        self.send(f"ACK {n}\n".encode() if batch else b"ACK\n" * n)

    # -- stdout -----------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._stdout_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while not self._halt.is_set():
            if self._paused.is_set():
                time.sleep(0.005)
                continue
            if not poller.poll(10):
                continue
            try:
                chunk = os.read(self._stdout_fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                with self._got_line:
                    self._got_line.notify_all()
                return
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        if not parts:
            return
        to_ack = 0
        for line in parts:
            with self._got_line:
                self.lines.append(line)
                self._got_line.notify_all()
            if self.ack_mode == "none":
                continue
            if self.ack_limit is not None and self.acked + to_ack >= self.ack_limit:
                continue
            if self.ack_mode == "each":
                # improg writes "ACK\n" as soon as each line is complete, one write per line.
                with self._write_lock:
                    self.acked += 1
                self.send(b"ACK\n")
            else:
                to_ack += 1
        if to_ack:
            with self._write_lock:
                self.acked += to_ack
            self.send(f"ACK {to_ack}\n".encode())

    def pause_reading(self) -> None:
        """Stop reading stdout (the emitter's writes then block once the pipe is full)."""
        self._paused.set()

    def resume_reading(self) -> None:
        self._paused.clear()

    def wait_lines(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` lines were read; False on timeout or EOF before that."""
        deadline = time.monotonic() + timeout
        with self._got_line:
            while len(self.lines) < n and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._got_line.wait(left)
            return len(self.lines) >= n

    def quiet_for(self, seconds: float) -> bool:
        """True if no new line arrives during ``seconds``."""
        before = len(self.lines)
        time.sleep(seconds)
        return len(self.lines) == before

    @property
    def seqs(self) -> List[int]:
        return [seq_of(line) for line in self.lines]

    # -- shutdown ---------------------------------------------------------------------------------

    def _halt_reader(self) -> None:
        self._halt.set()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(
        self,
        *,
        signal_on_close: bool = True,
        sigterm_first: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> StopResult:
        """improg's shutdown: STOP, SIGTERM, close both pipes, wait ``close_timeout``, SIGKILL.

        ``sigterm_first`` sends SIGTERM before STOP (the order some descriptions give).
        """
        assert self.proc is not None
        self._halt_reader()
        began = time.monotonic()
        if sigterm_first and signal_on_close:
            self._signal(signal.SIGTERM)
        self.send(b"STOP\n")
        if signal_on_close and not sigterm_first:
            self._signal(signal.SIGTERM)
        self._close_pipes()
        return self._wait_exit(began, close_timeout)

    def stop_only(self, timeout: float = 5.0) -> StopResult:
        """Write STOP and nothing else (pipes stay open, no signal); measure until the exit."""
        assert self.proc is not None
        self._halt_reader()
        began = time.monotonic()
        self.send(b"STOP\n")
        result = self._wait_exit(began, timeout)
        self._close_pipes()
        return result

    def _wait_exit(self, began: float, close_timeout: float) -> StopResult:
        assert self.proc is not None
        deadline = time.monotonic() + close_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return StopResult(self.proc.returncode, (time.monotonic() - began) * 1000, False)
            time.sleep(0.001)
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return StopResult(self.proc.returncode, (time.monotonic() - began) * 1000, True)

    def _signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def _close_pipes(self) -> None:
        with self._write_lock:
            for fd in (self._stdout_fd, self._stdin_fd):
                if fd >= 0:
                    os.close(fd)
            self._stdout_fd = self._stdin_fd = -1

    def kill(self) -> int:
        """kill -9 (if still running) and reap; returns the exit status."""
        if self.proc is None:
            return 0
        self._signal(signal.SIGKILL)
        code = self.proc.wait(timeout=10)
        self._halt_reader()
        self._close_pipes()
        return code


class StatePoller:
    """Reads the state file in a thread and records (token, acknowledged lines at that moment).

    The token is read before the acknowledgement count: a token the emitter committed needed
    acknowledgements written before the commit, so they are already counted when the count is read.
    """

    def __init__(self, state_file: Path, consumer: ImprogConsumer, tokens: TokenMap) -> None:
        self.state_file = state_file
        self.consumer = consumer
        self.tokens = tokens
        self.seen: List[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="state-poller", daemon=True)

    def start(self) -> StatePoller:
        self._thread.start()
        return self

    def _loop(self) -> None:
        last = None
        while not self._stop.is_set():
            self.tokens.refresh()
            token = state_token(self.state_file)
            acked = self.consumer.acked
            if token is not None and token != last:
                self.seen.append((token, acked))
                last = token
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
