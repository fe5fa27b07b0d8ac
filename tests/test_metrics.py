"""Acceptance: Prometheus metrics of a real run, parsed with prometheus_client's own parser.

A ``--once`` run of 300 events leaves a metrics file for node_exporter's textfile collector with
every family and the right counts; ``metrics_listen`` serves the same on loopback at /metrics.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from typing import Dict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kata_events.metrics import FAMILIES
from kata_events.options import parse_listen
from run_helpers import run_args

NAMES = {f"kata_events_{name}" for name, _, _ in FAMILIES}


def families(text: str) -> Dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(found: Dict[str, object], name: str, **labels: str) -> float:
    for sample in found[name].samples:  # type: ignore[attr-defined]
        if sample.name.endswith("_created"):
            continue
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise AssertionError(f"no sample of {name} with {labels}")


@pytest.mark.timeout(60)
def test_a_once_run_of_300_events_leaves_a_metrics_file_with_every_family(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=300)
    emu.inject("503")  # one retried failure: the retries family gets a reason
    prom = tmp_path / "textfile" / "kata_events.prom"
    prom.parent.mkdir()
    args = run_args(emu, ext_id, client_cert, tmp_path / "s.json", "--once", "--metrics-file", str(prom))
    run = runs.complete(args, timeout=45)
    assert run.returncode == 0, run.stderr_text[-3000:]
    assert len(run.lines()) == 300
    text = prom.read_text()
    found = families(text)
    assert set(found) >= NAMES, NAMES - set(found)  # the parser drops counters' _total
    assert value(found, "kata_events_events") == 300
    assert value(found, "kata_events_pages") >= 1
    assert value(found, "kata_events_bytes") > 300 * 500
    assert value(found, "kata_events_retries", reason="http_error") == 1
    assert abs(time.time() - value(found, "kata_events_last_commit_timestamp_seconds")) < 60
    assert value(found, "kata_events_lag_seconds") == 0
    assert value(found, "kata_events_up") == 0  # the run has stopped
    assert value(found, "kata_events_build_info", version=__import__("kata_events").__version__) == 1
    labels = f'external_system_id="{ext_id}",node="127.0.0.1"'  # the run's node: its url's host
    assert f"kata_events_events_total{{{labels}}} 300.0" in text
    assert [p.name for p in prom.parent.iterdir()] == ["kata_events.prom"], "a temporary file was left"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> list:
    """The local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(
                        socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address
                    )
    return found


@pytest.mark.timeout(60)
def test_metrics_listen_serves_on_loopback_when_only_a_port_is_given(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=40)
    port = _free_port()
    args = run_args(emu, ext_id, client_cert, tmp_path / "s.json", "--metrics-listen", str(port))
    run = runs.start(args)
    run.wait_lines(40, timeout=20)
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            found = families(answer.read().decode())
        if value(found, "kata_events_events") == 40 and value(found, "kata_events_up") == 1:
            break
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    assert _listening_addresses(port) == ["127.0.0.1"]
    run.send(signal.SIGTERM)
    assert run.wait(10) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_listen_address_forms():
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("", "x", "host:", "70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
