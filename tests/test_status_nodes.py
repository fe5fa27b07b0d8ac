"""Acceptance: one `kata-events status` for every Central Node on a collector.

Real runs against two emulators, each from its own configuration file: one works through a backlog
of events 40 minutes old (WARNING), the other has caught up and stopped (OK). ``status --config A
--config B`` exits 1 with one line naming both nodes, the lagging one's reason and perfdata for
each; a third configuration whose run has never committed is that node's UNKNOWN while the others
are still evaluated; a directory of ``<node>/config.toml`` is the same as listing them; ``--format
json`` is a list. The summing-up rules are unit-tested on `summarize` and `worst`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from kata_events.commands.status import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    NodeVerdict,
    node_of,
    summarize,
    unknown_verdict,
    worst,
)
from run_helpers import clean_env, installed_command

IDS = ("0b3c4f7e-5d2a-4a61-9b8e-2f6c1d0e9a7b", "7d1e9c3a-2b4f-4e6d-8a0c-5f3b1e7d9c2a")
_PERF = re.compile(r"(\S+)=([0-9.]+)s;")


def write_config(directory: Path, emu: Any, ext_id: str, cert: Any, name: str = "") -> Path:
    """``directory/config.toml`` for a run of ``emu``, its state file beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        f'url = ["{emu.url}"]',
        f'external_system_id = "{ext_id}"',
        f'cert = "{cert.cert_file}"',
        f'key = "{cert.key_file}"',
        f'ca_file = "{emu.ca_file}"',
        'state_file = "state.json"',
    ]
    if name:
        lines.append(f'name = "{name}"')
    config = directory / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def status(*args: str, fmt: str = "text") -> Tuple[int, Any]:
    """Run the installed ``kata-events status``: its exit code, and its text line or JSON."""
    argv = [str(installed_command()), "status", "--format", fmt, *args]
    done = subprocess.run(argv, capture_output=True, env=clean_env(), timeout=30)
    assert done.stderr == b"", done.stderr
    text = done.stdout.decode()
    assert text.count("\n") == 1, text
    return done.returncode, (json.loads(text) if fmt == "json" else text)


@pytest.mark.timeout(120)
def test_one_check_for_two_nodes_one_lagging_and_one_without_a_state_file(
    make_emulator, client_cert, make_client_cert, runs, tmp_path
):
    etc = tmp_path / "etc"
    lagging, fine = make_emulator(), make_emulator(backlog=20)
    lagging.add_events(2000, age=40 * 60)
    lagging.inject("slow", delay=0.3, count=1000)  # 10 events every 0.3 s: behind for a minute
    pcn = write_config(etc / "pcn", lagging, IDS[0], client_cert, name="pcn")
    scn = write_config(etc / "scn", fine, IDS[1], make_client_cert("scn"))  # named by its url's host
    quick = ["--stats-interval", "0", "--settle-time", "0"]
    done = runs.complete(["--config", str(scn), "--once", *quick], timeout=60)
    assert done.returncode == 0 and len(done.lines()) == 20, done.stderr_text[-3000:]
    behind = runs.start(["--config", str(pcn), "--max-events", "10", "--max-timeout", "1", *quick])

    deadline = time.monotonic() + 60
    while True:
        code, line = status("--config", str(pcn), "--config", str(scn))
        # Behind, and past its first commit (the lag is known from the first page, a moment before).
        if code == WARNING and "last_commit_age_pcn=" in line:
            break
        assert time.monotonic() < deadline, f"status stayed {code}: {line}"
        time.sleep(0.3)
    print(line)
    assert line.startswith("KATA-EVENTS WARNING - 2 nodes: pcn WARNING 40 min behind; 127.0.0.1 OK "), line
    assert "not running" in line and "last commit" in line, line
    perf = dict(_PERF.findall(line.split(" | ", 1)[1]))
    assert set(perf) == {"lag_pcn", "last_commit_age_pcn", "lag_127.0.0.1", "last_commit_age_127.0.0.1"}
    assert 40 * 60 - 5 <= float(perf["lag_pcn"]) <= 40 * 60 + 60 and float(perf["lag_127.0.0.1"]) < 60
    assert "lag_pcn=" in line and ";1800;5400;0" in line

    # A third node whose run has never committed: its UNKNOWN, the others still evaluated.
    never = write_config(etc / "scn2", fine, IDS[1].replace("7d1e", "1111"), client_cert, name="scn2")
    code, nodes = status("--config", str(pcn), "--config", str(scn), "--config", str(never), fmt="json")
    assert code == UNKNOWN, nodes
    assert [(n["node"], n["status"]) for n in nodes] == [
        ("pcn", "WARNING"),
        ("127.0.0.1", "OK"),
        ("scn2", "UNKNOWN"),
    ]
    assert "no state file" in nodes[2]["reason"] and nodes[0]["running"] is True
    assert nodes[0]["pid"] == behind.pid and nodes[0]["lag_seconds"] >= 40 * 60 - 5
    assert [n["config"] for n in nodes] == [str(pcn), str(scn), str(never)]

    # The directory holding <node>/config.toml: every node, in name order; a missing file and an
    # unreadable one are their own nodes' UNKNOWN.
    code, line = status("--config", str(etc))
    assert code == UNKNOWN and line.startswith("KATA-EVENTS UNKNOWN - 3 nodes: scn2 UNKNOWN no state file")
    assert "pcn WARNING 40 min behind" in line and "127.0.0.1 OK" in line
    (etc / "broken.toml").write_text("url = [\n", encoding="utf-8")
    code, nodes = status("--config", str(etc), "--config", str(tmp_path / "gone" / "config.toml"), fmt="json")
    assert code == UNKNOWN
    by_node = {n["node"]: n for n in nodes}
    assert set(by_node) == {"pcn", "127.0.0.1", "scn2", "broken", "gone"}
    assert "not valid TOML" in by_node["broken"]["reason"] and "cannot read" in by_node["gone"]["reason"]
    assert by_node["pcn"]["status"] == "WARNING"
    assert run_is_behind(behind)


def run_is_behind(run: Any) -> bool:
    return 0 < len(run.lines()) < 2000


def test_a_single_config_keeps_the_one_run_output(tmp_path):
    code, doc = status("--config", str(tmp_path / "none.toml"), fmt="json")
    assert code == UNKNOWN and isinstance(doc, dict) and "cannot read config file" in doc["reason"]
    code, line = status("--config", str(tmp_path / "none.toml"))
    assert line.startswith("KATA-EVENTS UNKNOWN - cannot read config file")


def test_state_file_flags_name_one_run_only(tmp_path):
    code, line = status("--config", str(tmp_path), "--state-file", str(tmp_path / "s.json"))
    assert code == UNKNOWN and "each configuration names its own" in line


def test_an_empty_directory_is_unknown_with_the_layout_expected(tmp_path):
    code, line = status("--config", str(tmp_path))
    assert code == UNKNOWN and f"{tmp_path}/<node>/config.toml" in line


# -- the rules ---------------------------------------------------------------------------------------


def _node(name: str, code: int, reason: str = "fine", lag: Any = 0.0) -> NodeVerdict:
    names = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
    verdict = {"status": names[code], "exit_code": code, "reason": reason, "lag_seconds": lag}
    verdict["last_commit_age_seconds"] = None if lag is None else 3.0
    return NodeVerdict(name, f"/etc/kata-events/{name}/config.toml", verdict)


def test_the_worst_state_wins_and_critical_outweighs_unknown():
    cases: List[Tuple[List[int], int]] = [
        ([OK, OK], OK),
        ([OK, WARNING], WARNING),
        ([WARNING, UNKNOWN], UNKNOWN),
        ([UNKNOWN, CRITICAL, OK], CRITICAL),
        ([], UNKNOWN),
    ]
    for codes, expected in cases:
        assert worst([_node(f"n{i}", c) for i, c in enumerate(codes)]) == expected, codes


def test_the_line_names_every_node_worst_first_with_perfdata_in_given_order():
    line = summarize(
        [
            _node("pcn", OK, "streaming (pid 7), caught up"),
            _node("scn1", CRITICAL, "1.6 h behind; the Central Node keeps events for 2 h", lag=5800.0),
            NodeVerdict("scn2", "/x", unknown_verdict("a | b")),
        ],
        1800,
        5400,
    )
    assert line == (
        "KATA-EVENTS CRITICAL - 3 nodes: scn1 CRITICAL 1.6 h behind; the Central Node keeps events for 2 h; "
        "scn2 UNKNOWN a / b; pcn OK streaming (pid 7), caught up "
        "| lag_pcn=0s;1800;5400;0 last_commit_age_pcn=3s;;;0 lag_scn1=5800s;1800;5400;0 "
        "last_commit_age_scn1=3s;;;0"
    )


def test_a_node_is_named_by_its_name_its_url_or_its_directory(tmp_path):
    named = tmp_path / "a" / "config.toml"
    named.parent.mkdir()
    named.write_text('name = "scn-msk"\nurl = ["https://cn.example.local"]\n')
    by_url = tmp_path / "b.toml"
    by_url.write_text('url = "https://10.0.0.5:443"\n')
    assert node_of(named) == "scn-msk" and node_of(by_url) == "10.0.0.5"
    assert node_of(tmp_path / "scn3" / "config.toml") == "scn3"
    assert node_of(tmp_path / "odd name.toml") == "odd-name"
