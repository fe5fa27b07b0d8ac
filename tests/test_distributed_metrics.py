"""Acceptance: several Central Nodes on one collector — metrics that do not collide, logs that say
which node.

Two real runs against two emulators write their ``metrics_file`` into one directory, as
node_exporter's textfile collector reads it: merged, no two samples share a name and a label set,
and every sample names its node and external system id. The ``metrics_listen`` endpoint carries
the same labels as the file. Every log line of a run carries its ``node``.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Dict, FrozenSet, List, Set, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kata_events.config import node_name_of
from kata_events.metrics import FAMILIES
from run_helpers import run_args

Series = Tuple[str, FrozenSet[Tuple[str, str]]]


def series(text: str) -> List[Series]:
    """Every sample of an exposition text as (sample name, labels)."""
    return [
        (sample.name, frozenset(sample.labels.items()))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_nodes_metrics_files_merge_without_a_duplicate_series(
    make_emulator, client_cert, make_client_cert, runs, tmp_path
):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    ids = ["0b3c4f7e-5d2a-4a61-9b8e-2f6c1d0e9a7b", "7d1e9c3a-2b4f-4e6d-8a0c-5f3b1e7d9c2a"]
    primary, secondary = make_emulator(backlog=120), make_emulator(backlog=80)
    primary.inject("503")  # a retried failure, so the retries family has a sample on one node
    port = _free_port()
    # The primary is named; the secondary takes the default, its url's host.
    first = runs.start(
        run_args(primary, ids[0], client_cert, tmp_path / "pcn.json", "--name", "pcn")
        + ["--metrics-file", str(textfile / "pcn.prom"), "--metrics-listen", str(port)]
    )
    first.wait_lines(120, timeout=30)
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            served = answer.read().decode()
        if f'kata_events_events_total{{external_system_id="{ids[0]}",node="pcn"}} 120.0' in served:
            break
        assert time.monotonic() < deadline, served
        time.sleep(0.2)
    first.send(signal.SIGTERM)
    assert first.wait(15) == 0, first.stderr_text[-3000:]
    second = runs.complete(
        run_args(secondary, ids[1], make_client_cert("scn"), tmp_path / "scn.json", "--once")
        + ["--metrics-file", str(textfile / "secondary.prom")],
        timeout=60,
    )
    assert second.returncode == 0, second.stderr_text[-3000:]
    assert len(second.lines()) == 80

    files = sorted(textfile.iterdir())
    assert [p.name for p in files] == ["pcn.prom", "secondary.prom"], "a temporary file was left"
    texts = {p.stem: p.read_text() for p in files}
    # The endpoint and the file of one run carry the same series (values move, labels do not).
    assert set(series(served)) == set(series(texts["pcn"]))

    merged = series("".join(texts.values()))
    duplicates = {s for s in merged if merged.count(s) > 1}
    assert not duplicates, duplicates
    nodes: Dict[str, Set[str]] = {}
    for name, labels in merged:
        found = dict(labels)
        assert set(found) >= {"node", "external_system_id"}, (name, found)
        nodes.setdefault(found["node"], set()).add(found["external_system_id"])
    assert nodes == {"pcn": {ids[0]}, "127.0.0.1": {ids[1]}}
    for stem, text in texts.items():
        families = {family.name for family in text_string_to_metric_families(text)}
        assert families >= {f"kata_events_{name}" for name, _, _ in FAMILIES}, (stem, families)
    assert (
        f'kata_events_events_total{{external_system_id="{ids[1]}",node="127.0.0.1"}} 80.0'
        in (texts["secondary"])
    )

    # Every log line names its node: the configured one, or the url's host.
    for run, node in ((first, "pcn"), (second, "127.0.0.1")):
        assert run.logs and not run.other_stderr, run.stderr_text[-2000:]
        assert {record.get("node") for record in run.logs} == {node}, run.stderr_text[-2000:]
    assert {r["event"] for r in first.logs} >= {"start", "config", "retry", "stop"}


@pytest.mark.timeout(60)
def test_a_configuration_error_names_the_node_it_belongs_to(runs, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('url = ["https://scn-2.example.local"]\nmax_event = 100\n', encoding="utf-8")
    run = runs.complete(["--config", str(config)], timeout=30)
    assert run.returncode == 78
    (fatal,) = run.logs
    assert fatal["event"] == "fatal" and fatal["node"] == "scn-2.example.local", fatal
    named = runs.complete(["--config", str(config), "--name", "scn-2"], timeout=30)
    assert named.returncode == 78 and named.logs[0]["node"] == "scn-2"


def test_the_default_name_is_the_first_url_s_host():
    assert node_name_of("https://CN.example.local") == "cn.example.local"
    assert node_name_of("https://10.0.0.5:443") == "10.0.0.5"
    assert node_name_of("https://10.0.0.5:8443") == "10.0.0.5"
    assert node_name_of("https://[fd00::5]") == "fd00--5"
    assert node_name_of("nonsense") == "kata-events"


def test_before_the_configuration_resolves_the_node_is_the_name_or_url_given():
    import argparse

    from kata_events.config import requested_name

    env = {"KATA_EVENTS_URL": "https://SCN1.example.local:8443, https://10.0.0.6"}
    assert requested_name(argparse.Namespace(), env) == "scn1.example.local"
    assert requested_name(argparse.Namespace(url=["https://10.0.0.5"]), env) == "10.0.0.5"
    assert requested_name(argparse.Namespace(name="pcn"), env) == "pcn"
    assert requested_name(argparse.Namespace(name="not a name"), {}) is None


def test_a_name_that_cannot_be_a_label_or_a_file_name_is_refused(tmp_path: Path):
    import argparse

    from kata_events import options
    from kata_events.config import load_run_config
    from kata_events.exits import UserError

    for name in ("-x", "a b", "pcn/1", "", "x" * 64):
        parser = argparse.ArgumentParser()
        options.add_run_arguments(parser)
        (tmp_path / "c").write_text("c")
        args = parser.parse_args(
            ["--url", "https://cn", "--external-system-id", "0b3c4f7e-5d2a-4a61-9b8e-2f6c1d0e9a7b"]
            + ["--cert", str(tmp_path / "c"), "--key", str(tmp_path / "c"), f"--name={name}"]
        )
        with pytest.raises(UserError) as caught:
            load_run_config(args, {})
        assert "name = " in str(caught.value) and "letters, digits" in str(caught.value)
