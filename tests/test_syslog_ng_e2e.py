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
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from kata_events import certs
from kata_events.emulator.server import Emulator
from shipper_helpers import (
    LineSink,
    count_lines,
    kill_left,
    program_string,
    shipper_env,
    stop_shipper,
    syslog_ng_binary,
    syslog_ng_command,
    syslog_ng_config_version,
    syslog_ng_example_config,
    tail,
    wait_gone,
    write_run_config,
)

SMALL_EVENTS = 4_800
SMALL_EVENT_BYTES = 1_500
BIG_EVENTS = 200
BIG_EVENT_BYTES = 100_000
SYSLOG_NG_DEFAULT_MSG_SIZE = 65_536
DELIVERY_DEADLINE = 120.0
STOP_WAIT = 15.0


def derive_config(
    version: str, small_cmd: str, big_cmd: str, sink_port: int, small_file: Path, big_file: Path
) -> str:
    """The shipped example with its paths and SIEM address swapped, plus a second source."""
    text = syslog_ng_example_config(version, small_cmd, sink_port, small_file)
    source = re.search(r"source s_kata_events \{.*?\n\};\n", text, re.S)
    assert source
    big_source = source.group(0).replace("s_kata_events", "s_kata_big").replace(small_cmd, big_cmd)
    return (
        f"{text}\n{big_source}\n"
        f'destination d_kata_big {{ file("{big_file}" template(t_kata_ndjson)); }};\n'
        "log { source(s_kata_big); destination(d_kata_big); flags(flow-control, final); };\n"
    )


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
    version = syslog_ng_config_version(binary)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    certs.make_self_signed_cert("syslog-ng-e2e", days=2).write(cert, key)

    small_file, big_file = tmp_path / "small.ndjson", tmp_path / "big.ndjson"
    siem_file = tmp_path / "siem.ndjson"
    small_log, big_log, ng_log = tmp_path / "small.log", tmp_path / "big.log", tmp_path / "syslog-ng.log"
    sink = LineSink(siem_file)
    common: Dict[str, Any] = {"listen": "127.0.0.1:0", "approve": "auto", "rate": 0}
    with (
        Emulator(
            state_dir=tmp_path / "emu-small", backlog=SMALL_EVENTS, event_bytes=SMALL_EVENT_BYTES, **common
        ) as small,
        Emulator(
            state_dir=tmp_path / "emu-big", backlog=BIG_EVENTS, event_bytes=BIG_EVENT_BYTES, **common
        ) as big,
    ):
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
        env = shipper_env()
        command = syslog_ng_command(binary, config, tmp_path)
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
            stop_shipper(process, STOP_WAIT)
            sink.close()
            # syslog-ng signals its programs' process groups on shutdown; make sure, by pid.
            leftovers = wait_gone(str(tmp_path), 5)
            kill_left(str(tmp_path))
        assert not leftovers, f"kata-events still running after syslog-ng stopped: {leftovers}"

        small_stats = assert_same_events(small_file, small, SMALL_EVENTS)
        siem_stats = assert_same_events(siem_file, small, SMALL_EVENTS)
        big_stats = assert_same_events(big_file, big, BIG_EVENTS)
    # The checks above mean something only if the data held what they are about.
    assert small_stats["non_ascii"] > SMALL_EVENTS // 10
    assert siem_stats["non_ascii"] == small_stats["non_ascii"]
    assert big_stats["longest"] > SYSLOG_NG_DEFAULT_MSG_SIZE
    assert big_stats["non_ascii"] == BIG_EVENTS


# -- the example on a fresh box -------------------------------------------------------------------------


class _SystemLog:
    """A stand-in for /dev/log: a Unix datagram socket that keeps every message logger sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: List[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


def _run_syslog_ng(binary: str, config: Path, work: Path, ng_log: Path) -> subprocess.Popen:
    with ng_log.open("ab") as out:
        return subprocess.Popen(
            syslog_ng_command(binary, config, work),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=shipper_env(),
        )


@pytest.mark.timeout(120)
def test_the_example_streams_on_a_box_without_its_log_directory(tmp_path: Path) -> None:
    """The example with only its addresses changed; /var/log/kata-events (here under tmp) is absent."""
    binary = syslog_ng_binary()
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    certs.make_self_signed_cert("syslog-ng-fresh", days=2).write(cert, key)
    kata_log = tmp_path / "var-log" / "kata-events" / "kata-events.log"
    copy_file, ng_log = tmp_path / "copy.ndjson", tmp_path / "syslog-ng.log"
    sink = LineSink(tmp_path / "siem.ndjson")
    with Emulator(
        listen="127.0.0.1:0", state_dir=tmp_path / "emu", approve="auto", rate=0, backlog=300
    ) as emu:
        write_run_config(tmp_path / "run.toml", emu, cert, key, tmp_path / "run.token", "auto")
        config = tmp_path / "syslog-ng.conf"
        config.write_text(
            syslog_ng_example_config(
                syslog_ng_config_version(binary),
                program_string(tmp_path / "run.toml", kata_log),
                sink.port,
                copy_file,
            ),
            encoding="utf-8",
        )
        process: Optional[subprocess.Popen] = None
        try:
            process = _run_syslog_ng(binary, config, tmp_path, ng_log)
            deadline = time.monotonic() + 60
            while count_lines(copy_file) < 300 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            assert count_lines(copy_file) == 300, f"--- syslog-ng:\n{tail(ng_log)}"
        finally:
            stop_shipper(process, STOP_WAIT)
            sink.close()
            leftovers = wait_gone(str(tmp_path), 5)
            kill_left(str(tmp_path))
        assert not leftovers, leftovers
        assert_same_events(copy_file, emu, 300)
    # The directory was made, and kata-events' log lines are in the file (JSON, one per line).
    records = [json.loads(line) for line in kata_log.read_text(encoding="utf-8").splitlines()]
    assert any(r.get("event") == "start" for r in records), records[:5]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("failure", ["kata-events exits", "the log file cannot be opened"])
def test_a_child_that_fails_at_once_is_said_in_the_system_log_not_restarted_unseen(
    tmp_path: Path, failure: str
) -> None:
    binary = syslog_ng_binary()
    if failure == "kata-events exits":
        # No such config file: kata-events exits 66 at once, its reason in its own log file.
        kata_log, expected_status = tmp_path / "logs" / "kata-events.log", 66
    else:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        kata_log, expected_status = blocker / "kata-events" / "kata-events.log", 2
    system_log = _SystemLog(tmp_path / "dev-log")
    config = tmp_path / "syslog-ng.conf"
    config.write_text(
        syslog_ng_example_config(
            syslog_ng_config_version(binary),
            program_string(tmp_path / "missing.toml", kata_log, logger_socket=tmp_path / "dev-log"),
            9,  # the SIEM is never reached: nothing is sent
            tmp_path / "copy.ndjson",
        ),
        encoding="utf-8",
    )
    ng_log = tmp_path / "syslog-ng.log"
    process: Optional[subprocess.Popen] = None
    try:
        process = _run_syslog_ng(binary, config, tmp_path, ng_log)
        deadline = time.monotonic() + 30
        while not system_log.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert system_log.messages, f"nothing in the system log; syslog-ng:\n{tail(ng_log)}"
        first = time.monotonic()
        time.sleep(3.0)  # a restart loop would start the program hundreds of times by now
        messages = list(system_log.messages)
    finally:
        stop_shipper(process, STOP_WAIT)
        system_log.close()
        wait_gone(str(tmp_path), 5)
        kill_left(str(tmp_path))
    assert len(messages) == 1, messages[:5]
    assert f"kata-events run exited with status {expected_status}" in messages[0], messages
    assert time.monotonic() - first >= 3.0
    if expected_status == 66:
        # One start in those seconds, and its reason in kata-events' own log file.
        lines = kata_log.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and "missing.toml" in lines[0], lines[:5]
