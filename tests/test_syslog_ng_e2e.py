"""End to end through a real syslog-ng: ``kata-events run`` under ``program()``, none lost or altered.

The syslog-ng configuration is ``syslog-ng.conf.example`` with only its paths and the SIEM's
address changed, so the test proves the example as shipped: ``flags(no-parse)``,
``log-msg-size()``, the ``${MESSAGE}\\n`` template, flow control, the ``exec`` and ``2>>`` of the
program string. Two emulators feed two ``program()`` sources: one with many ~1.5 KB events, one with
events of ~100 KB, longer than syslog-ng's default 64 KiB message size, so a lost ``log-msg-size``
would show as split lines. Events carry Cyrillic, CJK, backslashes, quotes, tabs and newlines
escaped in JSON strings. Every line that reaches the file and the TCP listener is compared with the
emulator's bytes for that sequence number, field by field and in order.

Skips when syslog-ng is not installed, except under CI (``CI`` set), where that is a failure.
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
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from kata_events import certs
from kata_events.emulator.server import Emulator

ROOT = Path(__file__).resolve().parents[1]
SMALL_EVENTS = 19_800
SMALL_EVENT_BYTES = 1_500
BIG_EVENTS = 200
BIG_EVENT_BYTES = 100_000
SYSLOG_NG_DEFAULT_MSG_SIZE = 65_536
DELIVERY_DEADLINE = 120.0
STOP_WAIT = 15.0


def syslog_ng_binary() -> str:
    fallback = "/usr/sbin/syslog-ng"
    found = shutil.which("syslog-ng") or (fallback if Path(fallback).exists() else "")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("syslog-ng is not installed; CI must install it (Debian package syslog-ng-core)")
        pytest.skip("syslog-ng is not installed (Debian: apt-get install syslog-ng-core)")
    return found


def config_version(binary: str) -> str:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^Config version:\s*(\d+\.\d+)", output, re.M)
    assert match, output
    return match.group(1)


def kata_events_command() -> str:
    """The installed console script next to this interpreter, else ``python -m kata_events``."""
    script = Path(sys.executable).with_name("kata-events")
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m kata_events"


class LineSink:
    """A TCP listener standing in for the SIEM: appends whatever it receives to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.path.open("ab") as out:
            while not self.stopping.is_set():
                try:
                    conn, _ = self.server.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                with conn:
                    conn.settimeout(0.2)
                    while not self.stopping.is_set():
                        try:
                            data = conn.recv(1 << 16)
                        except socket.timeout:
                            continue
                        if not data:
                            break
                        out.write(data)
                        out.flush()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


def write_run_config(path: Path, emulator: Emulator, cert: Path, key: Path, state: Path, ack: str) -> None:
    path.write_text(
        "\n".join(
            [
                f"url = [{json.dumps(emulator.url)}]",
                f'external_system_id = "{uuid.uuid4()}"',
                f"cert = {json.dumps(str(cert))}",
                f"key = {json.dumps(str(key))}",
                f"ca_file = {json.dumps(str(emulator.ca_file))}",
                f"state_file = {json.dumps(str(state))}",
                f'ack = "{ack}"',
                "max_timeout = 1",
                'log_format = "json"',
                "",
            ]
        ),
        encoding="utf-8",
    )


def program_string(config: Path, log: Path) -> str:
    return f"exec {kata_events_command()} run --config {shlex.quote(str(config))} 2>>{shlex.quote(str(log))}"


def derive_config(
    version: str, small_cmd: str, big_cmd: str, sink_port: int, small_file: Path, big_file: Path
) -> str:
    """The shipped example with its paths and SIEM address swapped, plus a second source."""
    text = (ROOT / "syslog-ng.conf.example").read_text(encoding="utf-8")
    example_cmd = (
        "exec /usr/local/bin/kata-events run --config /etc/kata-events/config.toml "
        "2>>/var/log/kata-events/kata-events.log"
    )
    replacements = {
        f'program("{example_cmd}"': f'program("{small_cmd}"',
        'network("siem.example.local"': 'network("127.0.0.1"',
        "port(9000)": f"port({sink_port})",
        'file("/var/log/kata-events/events.ndjson"': f'file("{small_file}"',
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"syslog-ng.conf.example no longer contains {old!r}"
        text = text.replace(old, new)
    source = re.search(r"source s_kata_events \{.*?\n\};\n", text, re.S)
    assert source
    big_source = source.group(0).replace("s_kata_events", "s_kata_big").replace(small_cmd, big_cmd)
    return (
        f"@version: {version}\n{text}\n{big_source}\n"
        f'destination d_kata_big {{ file("{big_file}" template(t_kata_ndjson)); }};\n'
        "log { source(s_kata_big); destination(d_kata_big); flags(flow-control, final); };\n"
    )


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


def ordered(data: bytes) -> Any:
    """A JSON value with every object as a list of pairs: equality then also checks key order."""
    return json.loads(data, object_pairs_hook=list)


def assert_same_events(path: Path, emulator: Emulator, expected: int) -> Dict[str, int]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name}: last line unterminated"
    lines = data[:-1].split(b"\n")
    assert len(lines) == expected, f"{path.name}: {len(lines)} lines, expected {expected}"
    non_ascii = 0
    for seq, line in enumerate(lines, 1):
        line.decode("utf-8")  # strict: no byte of a multi-byte character lost
        original = emulator.event_bytes(seq)
        assert ordered(line) == ordered(original), f"{path.name}: line {seq} differs from event {seq}"
        non_ascii += any(byte >= 0x80 for byte in line)
    return {"lines": len(lines), "longest": max(map(len, lines)), "non_ascii": non_ascii}


@pytest.mark.timeout(300)
def test_syslog_ng_program_source_delivers_every_event_unaltered(tmp_path: Path) -> None:
    binary = syslog_ng_binary()
    version = config_version(binary)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    certs.make_self_signed_cert("syslog-ng-e2e", days=2).write(cert, key)

    small_file, big_file = tmp_path / "small.ndjson", tmp_path / "big.ndjson"
    siem_file = tmp_path / "siem.ndjson"
    small_log, big_log, ng_log = tmp_path / "small.log", tmp_path / "big.log", tmp_path / "syslog-ng.log"
    sink = LineSink(siem_file)
    common: Dict[str, Any] = {"listen": "127.0.0.1:0", "approve": "auto", "rate": 0}
    with Emulator(
        state_dir=tmp_path / "emu-small", backlog=SMALL_EVENTS, event_bytes=SMALL_EVENT_BYTES, **common
    ) as small, Emulator(
        state_dir=tmp_path / "emu-big", backlog=BIG_EVENTS, event_bytes=BIG_EVENT_BYTES, **common
    ) as big:
        # syslog-ng gives the child /dev/null opened write-only as stdin: "auto" (the default, which
        # the example config keeps) must see that as no acknowledgements, like "none".
        write_run_config(tmp_path / "small.toml", small, cert, key, tmp_path / "small.token", "none")
        write_run_config(tmp_path / "big.toml", big, cert, key, tmp_path / "big.token", "auto")
        config = tmp_path / "syslog-ng.conf"
        config.write_text(
            derive_config(
                version,
                program_string(tmp_path / "small.toml", small_log),
                program_string(tmp_path / "big.toml", big_log),
                sink.port,
                small_file,
                big_file,
            ),
            encoding="utf-8",
        )
        env = {name: value for name, value in os.environ.items() if not name.startswith("KATA_EVENTS_")}
        command = [
            binary, "-F", "-e", "--no-caps", "-f", str(config),
            "--persist-file", str(tmp_path / "syslog-ng.persist"),
            "--pidfile", str(tmp_path / "syslog-ng.pid"),
            "--control", str(tmp_path / "syslog-ng.ctl"),
        ]  # fmt: skip
        process: Optional[subprocess.Popen] = None
        try:
            with ng_log.open("wb") as ng_out:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=ng_out, stderr=subprocess.STDOUT, env=env
                )
                deadline = time.monotonic() + DELIVERY_DEADLINE
                while time.monotonic() < deadline and process.poll() is None:
                    small_lines, siem_lines = count_lines(small_file), count_lines(siem_file)
                    if min(small_lines, siem_lines) >= SMALL_EVENTS and count_lines(big_file) >= BIG_EVENTS:
                        break
                    time.sleep(0.25)
                # Give a duplicate or a stray line the chance to show before the counts are judged.
                time.sleep(1.0)
                counts = (count_lines(small_file), count_lines(siem_file), count_lines(big_file))
                diagnosis = (
                    f"lines (file, tcp, big file): {counts}; syslog-ng exit: {process.poll()}\n"
                    f"--- syslog-ng:\n{tail(ng_log)}\n--- kata-events (small):\n{tail(small_log)}\n"
                    f"--- kata-events (big):\n{tail(big_log)}"
                )
                assert counts == (SMALL_EVENTS, SMALL_EVENTS, BIG_EVENTS), diagnosis
        finally:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            sink.close()
            # syslog-ng signals its programs' process groups on shutdown; make sure, by pid.
            deadline = time.monotonic() + 5
            while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
                time.sleep(0.1)
            leftovers = processes_mentioning(str(tmp_path))
            for pid in leftovers:
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"kata-events still running after syslog-ng stopped: {leftovers}"

        small_stats = assert_same_events(small_file, small, SMALL_EVENTS)
        siem_stats = assert_same_events(siem_file, small, SMALL_EVENTS)
        big_stats = assert_same_events(big_file, big, BIG_EVENTS)
    # The checks above mean something only if the data held what they are about.
    assert small_stats["non_ascii"] > SMALL_EVENTS // 10
    assert siem_stats["non_ascii"] == small_stats["non_ascii"]
    assert big_stats["longest"] > SYSLOG_NG_DEFAULT_MSG_SIZE
    assert big_stats["non_ascii"] == BIG_EVENTS
