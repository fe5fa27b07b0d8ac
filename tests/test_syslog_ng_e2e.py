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
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional

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

SMALL_EVENTS = 19_800
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
