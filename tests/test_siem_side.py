"""docs/siem.md, the receiving side: what reaches the SIEM is what its KUMA section describes.

A KUMA collector with a ``tcp`` connector (delimiter ``\\n``, buffer 1 MB by default) and a ``json``
normalizer cuts the stream at each ``\\n`` and parses each record as one JSON object; the event time
is ``Timestamp``, epoch microseconds. `KumaLikeCollector` does exactly that to what a TCP listener
received, and is fed through the page's own commands (the ``| nc -N`` check and the ``Timestamp``
probe, with only addresses and paths changed) and through ``syslog-ng.conf.example`` under a real
syslog-ng. The SIEM-bound framing of every shipped example is checked in its file. Real processes
against the emulator over mutual TLS on loopback.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from kata_events import certs
from kata_events.config.sources import tomllib
from kata_events.emulator.server import Emulator
from shipper_helpers import (
    LineSink,
    count_lines,
    kata_events_command,
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

ROOT = Path(__file__).resolve().parent.parent
SIEM_DOC = ROOT / "docs" / "siem.md"
EVENTS = 200
#: The KUMA tcp connector's default buffer size (docs/siem.md): no record may be longer.
KUMA_BUFFER = 1024 * 1024


class KumaLikeCollector:
    """What docs/siem.md's KUMA section says the collector does with a TCP stream."""

    def __init__(self, data: bytes) -> None:
        assert data.endswith(b"\n"), f"the stream does not end with the delimiter: {data[-200:]!r}"
        self.records = data[:-1].split(b"\n")

    def normalized(self) -> List[Dict[str, Any]]:
        """Each record parsed by a json normalizer, with its event time from ``Timestamp``."""
        events = []
        for number, record in enumerate(self.records, 1):
            assert record, f"record {number} is empty (a blank line in the stream)"
            assert len(record) <= KUMA_BUFFER, f"record {number} is {len(record)} bytes, over the buffer"
            event = json.loads(record.decode("utf-8"))
            assert isinstance(event, dict), f"record {number} is not a JSON object: {record[:200]!r}"
            timestamp = event["Timestamp"]
            assert isinstance(timestamp, int), f"record {number}: Timestamp {timestamp!r} is not an integer"
            event["_event_time"] = datetime.datetime.fromtimestamp(timestamp / 1e6, datetime.timezone.utc)
            events.append(event)
        return events


def _assert_the_events(events: List[Dict[str, Any]], count: int) -> None:
    assert sorted(e["EmulatorSeq"] for e in events) == list(range(1, count + 1))
    now = datetime.datetime.now(datetime.timezone.utc)
    for event in events:
        # Microseconds read as such land near now; read as milliseconds they would be ~50,000 years out.
        assert abs(event["_event_time"] - now) < datetime.timedelta(days=1), event["_event_time"]
    assert any(any(ord(c) > 127 for c in json.dumps(e, ensure_ascii=False, default=str)) for e in events)


def _doc_command(pattern: str) -> str:
    text = SIEM_DOC.read_text(encoding="utf-8")
    match = re.search(pattern, text, re.M)
    assert match, f"docs/siem.md shows no command matching {pattern!r}"
    return match.group(0)


def _as_here(command: str, config: Path, state: Path, port: Optional[int] = None) -> str:
    """A command of the page with only its paths and the SIEM's address changed."""
    replacements = {
        "--config /etc/kata-events/config.toml": f"--config {shlex.quote(str(config))}",
        "--state-file /tmp/probe.token": f"--state-file {shlex.quote(str(state))}",
    }
    if port is not None:
        replacements["siem.example.local 9000"] = f"127.0.0.1 {port}"
    for old, new in replacements.items():
        assert old in command, f"the command {command!r} no longer contains {old!r}"
        command = command.replace(old, new)
    assert command.startswith("kata-events ")
    command = kata_events_command() + command[len("kata-events") :]
    return command.replace("python3 -c", f"{shlex.quote(sys.executable)} -c")


def _emulator(tmp_path: Path, **options: Any) -> Emulator:
    settings: Dict[str, Any] = {"listen": "127.0.0.1:0", "approve": "auto", "rate": 0}
    settings.update(options)
    return Emulator(state_dir=tmp_path / "emu", **settings)


def _client(tmp_path: Path) -> tuple:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    certs.make_self_signed_cert("siem-side", days=2, key_type="ec").write(cert, key)
    return cert, key


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("nc") is None, reason="needs nc (netcat-openbsd; .ci/run installs it)")
def test_the_pages_nc_check_reaches_a_kuma_like_collector_as_json_lines(tmp_path: Path) -> None:
    cert, key = _client(tmp_path)
    sink = LineSink(tmp_path / "siem.ndjson")
    try:
        with _emulator(tmp_path, backlog=EVENTS) as emu:
            config = tmp_path / "config.toml"
            write_run_config(config, emu, cert, key, tmp_path / "unused.token", "none")
            command = _as_here(
                _doc_command(r"^kata-events run .*\| nc -N siem\.example\.local 9000$"),
                config,
                tmp_path / "probe.token",
                sink.port,
            )
            done = subprocess.run(
                ["sh", "-c", command], capture_output=True, timeout=60, env=shipper_env(), cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
            deadline = time.monotonic() + 10
            while count_lines(sink.path) < EVENTS and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        sink.close()
    events = KumaLikeCollector(sink.path.read_bytes()).normalized()
    _assert_the_events(events, EVENTS)


@pytest.mark.timeout(90)
def test_the_pages_timestamp_probe_prints_the_event_time(tmp_path: Path) -> None:
    cert, key = _client(tmp_path)
    with _emulator(tmp_path, backlog=5) as emu:
        config = tmp_path / "config.toml"
        write_run_config(config, emu, cert, key, tmp_path / "unused.token", "none")
        command = _as_here(
            _doc_command(r"^kata-events run .*--once.*\\$\n.*Timestamp.*$").replace("\\\n", " "),
            config,
            tmp_path / "probe.token",
        )
        done = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=60, env=shipper_env()
        )
    assert done.returncode == 0, done.stderr[-3000:]
    raw, shown = done.stdout.strip().split(" ", 1)
    assert len(raw) == 16, raw  # epoch microseconds, as the page says to expect
    when = datetime.datetime.fromisoformat(shown)
    assert abs(when - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(days=1), shown


@pytest.mark.timeout(120)
def test_the_syslog_ng_example_reaches_a_kuma_like_collector_as_json_lines(tmp_path: Path) -> None:
    binary = syslog_ng_binary()
    cert, key = _client(tmp_path)
    copy_file, ng_log = tmp_path / "copy.ndjson", tmp_path / "syslog-ng.log"
    sink = LineSink(tmp_path / "siem.ndjson")
    process: Optional[subprocess.Popen] = None
    with _emulator(tmp_path, backlog=EVENTS) as emu:
        write_run_config(tmp_path / "run.toml", emu, cert, key, tmp_path / "run.token", "auto")
        config = tmp_path / "syslog-ng.conf"
        config.write_text(
            syslog_ng_example_config(
                syslog_ng_config_version(binary),
                program_string(tmp_path / "run.toml", tmp_path / "log" / "kata-events.log"),
                sink.port,
                copy_file,
            ),
            encoding="utf-8",
        )
        try:
            with ng_log.open("ab") as out:
                process = subprocess.Popen(
                    syslog_ng_command(binary, config, tmp_path),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=shipper_env(),
                )
            deadline = time.monotonic() + 60
            while count_lines(sink.path) < EVENTS and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            assert count_lines(sink.path) == EVENTS, f"--- syslog-ng:\n{tail(ng_log)}"
        finally:
            stop_shipper(process, 10)
            sink.close()
            leftovers = wait_gone(str(tmp_path), 5)
            kill_left(str(tmp_path))
    assert not leftovers, leftovers
    events = KumaLikeCollector(sink.path.read_bytes()).normalized()
    _assert_the_events(events, EVENTS)


def _fluent_bit_output(text: str) -> Dict[str, str]:
    section, found = "", {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line
            continue
        if section == "[OUTPUT]" and line:
            key, _, value = line.partition(" ")
            found[key.lower()] = value.strip()
    return found


def test_every_shipped_example_sends_the_siem_json_lines() -> None:
    """The SIEM-bound output of each example: one JSON object per line, ended by ``\\n``."""
    vector = tomllib.loads((ROOT / "vector.toml.example").read_text(encoding="utf-8"))
    siem = vector["sinks"]["siem"]
    assert (siem["type"], siem["mode"]) == ("socket", "tcp")
    assert siem["framing"]["method"] == "newline_delimited" and siem["encoding"]["codec"] == "json"

    fluent_bit = _fluent_bit_output((ROOT / "fluent-bit.conf.example").read_text(encoding="utf-8"))
    assert fluent_bit["name"] == "tcp" and fluent_bit["format"] == "json_lines", fluent_bit

    rsyslog = (ROOT / "rsyslog-improg.conf.example").read_text(encoding="utf-8")
    assert 'template(name="kata_ndjson" type="string" string="%msg%\\n")' in rsyslog
    assert re.search(r'type="omfwd".*?protocol="tcp".*?template="kata_ndjson"', rsyslog, re.S)

    syslog_ng = (ROOT / "syslog-ng.conf.example").read_text(encoding="utf-8")
    assert 'template t_kata_ndjson { template("${MESSAGE}\\n"); };' in syslog_ng
    assert re.search(
        r'network\("siem\.example\.local"\s+transport\("tcp"\).*?template\(t_kata_ndjson\)', syslog_ng, re.S
    )


def test_the_page_cites_a_source_for_each_siem_and_the_readme_links_it() -> None:
    text = SIEM_DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    vendors = {s.split("\n", 1)[0]: s for s in sections if not s.startswith(("The event time", "Checking"))}
    assert len(vendors) == 6, list(vendors)
    for name, body in vendors.items():
        if name.startswith("MaxPatrol"):
            assert "found no public" in body  # nothing is claimed without a page to cite
            continue
        assert "from" in body.lower() and "documentation; not run here" in body, name
        assert re.search(r"\]\(https://", body), f"{name}: no public page cited"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/siem.md)" in readme
