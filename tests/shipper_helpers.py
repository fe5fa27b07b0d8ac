"""Helpers for the tests that run ``kata-events run`` under a real or emulated log shipper.

What they share: finding a shipper's binary (skip with a message where it is missing, fail under CI
where CI must install it), the ``kata-events`` command line a shipper runs, a run configuration
file, a TCP listener standing in for the SIEM, finding processes left behind, and judging a
delivery by the EmulatorSeq numbers that arrived: which are missing (the promise is that none is)
and how many came twice (allowed, counted). Nothing here fakes a socket or a pipe.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import pytest

from determinism import fixed_uuid
from kata_events.emulator.server import Emulator

ROOT = Path(__file__).resolve().parents[1]


def syslog_ng_binary() -> str:
    """syslog-ng's path; skips the test where it is missing, fails under CI (which installs it)."""
    fallback = "/usr/sbin/syslog-ng"
    found = shutil.which("syslog-ng") or (fallback if Path(fallback).exists() else "")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("syslog-ng is not installed; CI must install it (Debian package syslog-ng-core)")
        pytest.skip("syslog-ng is not installed (Debian: apt-get install syslog-ng-core)")
    return found


def syslog_ng_config_version(binary: str) -> str:
    """The ``@version`` the installed syslog-ng expects."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^Config version:\s*(\d+\.\d+)", output, re.M)
    assert match, output
    return match.group(1)


def syslog_ng_command(binary: str, config: Path, work: Path) -> List[str]:
    """syslog-ng in the foreground with its persist file, pid file and control socket in ``work``."""
    return [
        binary, "-F", "-e", "--no-caps", "-f", str(config),
        "--persist-file", str(work / "syslog-ng.persist"),
        "--pidfile", str(work / "syslog-ng.pid"),
        "--control", str(work / "syslog-ng.ctl"),
    ]  # fmt: skip


def fluent_bit_binary() -> str:
    """Fluent Bit's path: ``$FLUENT_BIT``, else ``fluent-bit`` on PATH; skips the test when missing.

    Fluent Bit is in no package registry CI reaches, so it is never required: build it from source
    (cmake, with the exec input, the tcp output and filesystem storage) and point FLUENT_BIT at it.
    """
    candidates = [os.environ.get("FLUENT_BIT", ""), shutil.which("fluent-bit") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(
        "Fluent Bit is not installed: set FLUENT_BIT to a fluent-bit binary (built from source with "
        "the exec input and tcp output) or put fluent-bit on PATH"
    )
    raise AssertionError("unreachable")


def kata_events_command() -> str:
    """The installed console script next to this interpreter, else ``python -m kata_events``."""
    script = Path(sys.executable).with_name("kata-events")
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m kata_events"


def shipper_env() -> Dict[str, str]:
    """The test's environment without KATA_EVENTS_* variables, for a shipper and its child."""
    return {name: value for name, value in os.environ.items() if not name.startswith("KATA_EVENTS_")}


def write_run_config(
    path: Path, emulator: Emulator, cert: Path, key: Path, state: Path, ack: str, *extra: str
) -> None:
    """A ``kata-events run`` config for ``emulator`` (JSON logs, 1 s long polls), then ``extra`` lines."""
    path.write_text(
        "\n".join(
            [
                f"url = [{json.dumps(emulator.url)}]",
                f'external_system_id = "{fixed_uuid()}"',
                f"cert = {json.dumps(str(cert))}",
                f"key = {json.dumps(str(key))}",
                f"ca_file = {json.dumps(str(emulator.ca_file))}",
                f"state_file = {json.dumps(str(state))}",
                f'ack = "{ack}"',
                "max_timeout = 1",
                'log_format = "json"',
                *extra,
                "",
            ]
        ),
        encoding="utf-8",
    )


class LineSink:
    """A TCP listener standing in for the SIEM: appends the lines it receives to a file.

    Every connection is served at once on a thread of its own (Fluent Bit's tcp output opens one
    per worker), and only whole lines are appended, so lines from two connections never mix.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stopping = threading.Event()
        self._write_lock = threading.Lock()
        self._out = self.path.open("ab")
        self._threads: List[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._receive, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _receive(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            conn.settimeout(0.2)
            while not self.stopping.is_set():
                try:
                    data = conn.recv(1 << 16)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut:
                    self._append(pending[:cut])
                    pending = pending[cut:]
        if pending:
            self._append(pending)

    def _append(self, data: bytes) -> None:
        with self._write_lock:
            self._out.write(data)
            self._out.flush()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for thread in self._threads:
            thread.join(5)
        self.server.close()
        self._out.close()


def stop_shipper(process: Optional[subprocess.Popen], wait: float) -> None:
    """Stop a shipper still running as its service manager would: SIGTERM, then SIGKILL after ``wait`` s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no file)"


def processes_mentioning(marker: str) -> List[int]:
    """Pids of the processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def wait_gone(marker: str, timeout: float) -> List[int]:
    """Wait up to ``timeout`` for every process mentioning ``marker`` to exit; the ones left."""
    deadline = time.monotonic() + timeout
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_mentioning(marker)


def kill_left(marker: str) -> List[int]:
    """SIGKILL whatever still mentions ``marker`` (test cleanup); the pids that were killed."""
    left = processes_mentioning(marker)
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return left


# -- judging a delivery by sequence numbers ----------------------------------------------------------


def seqs_in_ndjson(path: Path) -> List[int]:
    """The EmulatorSeq of every complete JSON line in ``path`` (a shipper may re-encode the JSON)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    found = []
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            found.append(int(json.loads(line)["EmulatorSeq"]))
    return found


@dataclass
class GapReport:
    """What arrived of events ``first``..``last``: missing ones, and extra copies."""

    first: int
    last: int
    received: int
    missing: List[int] = field(default_factory=list)
    duplicates: int = 0

    def summary(self) -> str:
        shown = self.missing[:30]
        more = f" (+{len(self.missing) - len(shown)} more)" if len(self.missing) > len(shown) else ""
        return (
            f"events {self.first}..{self.last}: {self.received} lines received, "
            f"{len(self.missing)} missing {shown}{more}, {self.duplicates} duplicates"
        )


def gap_report(seqs: Iterable[int], last: int, first: int = 1) -> GapReport:
    """Judge the delivery of events ``first``..``last`` from the sequence numbers that arrived."""
    counts: Dict[int, int] = {}
    received = 0
    for seq in seqs:
        received += 1
        counts[seq] = counts.get(seq, 0) + 1
    wanted = range(first, last + 1)
    missing = [seq for seq in wanted if seq not in counts]
    duplicates = sum(count - 1 for seq, count in counts.items() if first <= seq <= last and count > 1)
    return GapReport(first, last, received, missing, duplicates)


def wait_delivered(
    seqs: Callable[[], Iterable[int]], last: int, timeout: float, alive: Callable[[], bool] = lambda: True
) -> GapReport:
    """Wait up to ``timeout`` until every event 1..``last`` arrived (or ``alive`` says the shipper died)."""
    deadline = time.monotonic() + timeout
    while True:
        report = gap_report(seqs(), last)
        if not report.missing or time.monotonic() >= deadline or not alive():
            return report
        time.sleep(0.25)


@dataclass
class StopStartLog:
    """The stops and restarts a test made, for its failure message and its printed summary."""

    seed: int
    stops: List[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.stops.append(text)

    def __str__(self) -> str:
        return f"seed {self.seed}; " + "; ".join(self.stops)


def report_line(name: str, report: GapReport, log: StopStartLog, seconds: Optional[float] = None) -> str:
    """One line for the test's output: the figures a reader of the CI log wants."""
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    return f"{name}: {report.summary()}{took}; {log}"


# -- syslog-ng's shipped example ----------------------------------------------------------------------

_PROGRAM = re.compile(r'program\("((?:[^"\\]|\\.)*)"')


def syslog_ng_example_program() -> str:
    """The example's program() string, as written in the file (syslog-ng's escapes kept)."""
    match = _PROGRAM.search((ROOT / "syslog-ng.conf.example").read_text(encoding="utf-8"))
    assert match, "syslog-ng.conf.example has no program() source"
    return match.group(1)


def program_string(config: Path, log: Path, logger_socket: Optional[Path] = None) -> str:
    """The example's program() string with only its addresses changed: this test's command, config
    file and log file (its directory too), and ``logger_socket`` for the system log's socket."""
    text = syslog_ng_example_program()
    replacements = {
        "/usr/local/bin/kata-events": kata_events_command(),
        "/etc/kata-events/config.toml": shlex.quote(str(config)),
        "/var/log/kata-events/kata-events.log": shlex.quote(str(log)),
        "mkdir -p /var/log/kata-events;": f"mkdir -p {shlex.quote(str(log.parent))};",
    }
    if logger_socket is not None:
        replacements["logger -t"] = f"logger -u {shlex.quote(str(logger_socket))} -t"
    for old, new in replacements.items():
        assert old in text, f"syslog-ng.conf.example's program() no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def syslog_ng_example_config(version: str, program: str, sink_port: int, copy_file: Path) -> str:
    """``syslog-ng.conf.example`` with only its program string, SIEM address and file path changed."""
    text = (ROOT / "syslog-ng.conf.example").read_text(encoding="utf-8")
    replacements = {
        f'program("{syslog_ng_example_program()}"': f'program("{program}"',
        'network("siem.example.local"': 'network("127.0.0.1"',
        "port(9000)": f"port({sink_port})",
        'file("/var/log/kata-events/events.ndjson"': f'file("{copy_file}"',
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"syslog-ng.conf.example no longer contains {old!r}"
        text = text.replace(old, new)
    return f"@version: {version}\n{text}"


# -- a reader that stops the way Fluent Bit's exec input does -----------------------------------------


class ExecInputLikeReader:
    """Runs ``command`` with ``/bin/sh -c`` and reads its stdout the way Fluent Bit's exec input does.

    While running, every line read is handed to ``forward`` at once (a threaded, oneshot exec input
    with an output that keeps up). :meth:`stop` is the end of Fluent Bit's clean stop as its source
    shows (plugins/in_exec/in_exec.c, src/flb_engine.c, v5.1): ingestion stops, but the input thread
    keeps reading lines out of the pipe and they go nowhere; ``grace`` seconds later the child's
    process group gets SIGTERM (the input's pre-exit callback), and the reader reads on to EOF.
    In Fluent Bit the lines so dropped are those read after the engine's last pass over the input's
    ring buffer, which runs every 250 ms and until the engine shuts down, shortly before the
    pre-exit callback; lines read earlier in its shutdown grace are still flushed.
    """

    def __init__(
        self,
        command: str,
        forward: Callable[[bytes], None],
        grace: float,
        stderr_path: Path,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.forward = forward
        self.grace = grace
        self.forwarded = 0
        self.dropped = 0
        self._ingesting = threading.Event()
        self._ingesting.set()
        with stderr_path.open("ab") as stderr:
            # A process group of its own, as in_exec_popen gives the child (setpgid).
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env if env is not None else shipper_env(),
                start_new_session=True,
            )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        # Buffered line reads, like fgets on the FILE that in_exec_popen opens on the pipe.
        for line in self.proc.stdout:
            if self._ingesting.is_set():
                self.forward(line)
                self.forwarded += 1
            else:
                self.dropped += 1

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """A clean stop: stop ingesting, keep reading, SIGTERM the child after the grace; its exit code."""
        self._ingesting.clear()
        time.sleep(self.grace)
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:
            pass
        self._thread.join(timeout)
        code = self.proc.wait(timeout)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        """Test cleanup: end the child's process group if it still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- Fluent Bit's shipped example ---------------------------------------------------------------------

FLUENT_BIT_EXAMPLE_COMMAND = "exec /usr/local/bin/kata-events run --config /etc/kata-events/config.toml"
FLUENT_BIT_EXAMPLE_ONCE_COMMAND = (
    "exec /usr/local/bin/kata-events run --once --config /etc/kata-events/config.toml"
)


def fluent_bit_example_config(
    mode: str, config: Path, parsers: Path, storage: Path, sink_port: int, interval: int = 1
) -> str:
    """``fluent-bit.conf.example`` with only its paths and the SIEM's address changed.

    ``mode``: ``"oneshot"`` keeps the example's active input; ``"interval"`` comments it out and
    uncomments the scheduled-drain input instead, with ``Interval_Sec`` shortened to ``interval``
    (the example's 30 s would make a test wait minutes for nothing).
    """
    text = (ROOT / "fluent-bit.conf.example").read_text(encoding="utf-8")
    command = f"exec {kata_events_command()} run --config {config}"
    once = f"exec {kata_events_command()} run --once --config {config}"
    replacements = {
        "Parsers_File  /etc/fluent-bit/kata-events-parsers.conf": f"Parsers_File  {parsers}",
        "storage.path  /var/lib/fluent-bit/storage": f"storage.path  {storage}",
        f"Command       {FLUENT_BIT_EXAMPLE_COMMAND}\n": f"Command       {command}\n",
        f"Command       {FLUENT_BIT_EXAMPLE_ONCE_COMMAND}\n": f"Command       {once}\n",
        "Host           siem.example.local": "Host           127.0.0.1",
        "Port           9000": f"Port           {sink_port}",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"fluent-bit.conf.example no longer contains {old!r}"
        text = text.replace(old, new)
    if mode == "oneshot":
        return text
    assert mode == "interval", mode
    active = re.search(r"\n\[INPUT\]\n(    .*\n)+", text)
    commented = re.search(r"\n# \[INPUT\]\n(#     .*\n)+", text)
    assert active and commented, "fluent-bit.conf.example no longer has its two [INPUT] sections"
    disabled = "\n" + "".join(f"# {line}\n" for line in active.group(0).strip("\n").split("\n"))
    enabled = "\n" + "".join(f"{line[2:]}\n" for line in commented.group(0).strip("\n").split("\n"))
    assert "Interval_Sec  30\n" in enabled, enabled
    enabled = enabled.replace("Interval_Sec  30\n", f"Interval_Sec  {interval}\n")
    return text.replace(commented.group(0), enabled).replace(active.group(0), disabled)


def first_run_once(config: Path, stderr_path: Path, timeout: float = 60.0) -> List[int]:
    """``kata-events run --once`` with its stdout read by the test: makes the subscription and
    commits its first pages; the EmulatorSeq of every line it wrote.

    A stop within ``settle_time`` of a new subscription's first page cannot go back before that
    page (there is no token to ask for it again; kata-events warns and counts it delivered), so
    tests about restarts start from an existing subscription.
    """
    with stderr_path.open("ab") as stderr:
        done = subprocess.run(
            ["/bin/sh", "-c", f"exec {kata_events_command()} run --once --config {shlex.quote(str(config))}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=shipper_env(),
            timeout=timeout,
        )
    assert done.returncode == 0, f"run --once exited {done.returncode}\n{tail(stderr_path)}"
    return [int(json.loads(line)["EmulatorSeq"]) for line in done.stdout.split(b"\n") if line.strip()]
