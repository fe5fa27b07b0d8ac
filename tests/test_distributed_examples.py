"""The examples for several Central Nodes on one collector: the systemd template unit, the second
source of the Vector and Fluent Bit examples, docs/distributed.md.

The template is read as an INI file (configparser) and its instance paths checked; where systemd
is installed, ``systemd-analyze verify`` checks an instance of it. The per-node vector.toml its
comment tells how to make is made the same way here and must point at that node's files.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from kata_events import options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "kata-events@.service.example"


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def template() -> configparser.ConfigParser:
    # No interpolation: %i is systemd's, not configparser's. Keys keep their case.
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(read(TEMPLATE))
    return unit


def test_the_template_runs_one_instance_per_node_from_its_own_directory() -> None:
    unit = template()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["ExecStart"] == "/usr/bin/vector --config /etc/kata-events/%i/vector.toml"
    assert service["ExecStartPre"].endswith(" validate --no-environment /etc/kata-events/%i/vector.toml")
    assert service["StateDirectory"] == "kata-events/%i" and service["StateDirectoryMode"] == "0700"
    assert service["LogsDirectory"] == "kata-events/%i"
    assert service["User"] == "kata-events" and service["ProtectSystem"] == "strict"
    assert service["Restart"] == "always" and service["KillMode"] == "mixed"
    assert "%i" in unit["Unit"]["Description"]
    # The single-node unit's hardening, line for line.
    single = configparser.ConfigParser(interpolation=None)
    single.optionxform = str  # type: ignore[assignment,method-assign]
    single.read_string(read("kata-events.service.example"))
    hardening = {
        k: v for k, v in single["Service"].items() if k.startswith(("Protect", "Restrict", "Private"))
    }
    assert {k: service.get(k) for k in hardening} == hardening


def node_vector_toml(node: str) -> Dict[str, Any]:
    """vector.toml.example made into one node's vector.toml by the sed line of the template's
    comment, run as written."""
    comment = "\n".join(line[1:] for line in read(TEMPLATE).splitlines() if line.startswith("#"))
    match = re.search(
        r"^\s*(sed (?:.*\\\n)*.*vector\.toml\.example) > /etc/kata-events/scn1/vector\.toml", comment, re.M
    )
    assert match, "the template's comment shows how to make a node's vector.toml"
    command = match.group(1).replace("\\\n", " ").replace("scn1", node)
    if shutil.which("sed") is None:
        pytest.skip("no sed")
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, check=True)
    return tomllib.loads(done.stdout)


def test_a_node_s_vector_toml_points_at_that_node_s_files() -> None:
    vector = node_vector_toml("scn-msk")
    assert vector["data_dir"] == "/var/lib/kata-events/scn-msk"  # the instance's StateDirectory
    command = vector["sources"]["kata_events"]["command"]
    assert command[-2:] == ["--config", "/etc/kata-events/scn-msk/config.toml"]
    for sink in vector["sinks"].values():
        if sink["type"] == "file":
            assert sink["path"].startswith("/var/log/kata-events/scn-msk/"), sink["path"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_an_instance_of_the_template(tmp_path: Path) -> None:
    # verify wants the executables to exist; the shipper is not installed here.
    (tmp_path / "kata-events@.service").write_text(
        read(TEMPLATE).replace("/usr/bin/vector", "/bin/true"), encoding="utf-8"
    )
    instance = tmp_path / "kata-events@scn1.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "kata-events@" in line]
    assert result.returncode == 0 and not problems, result.stderr


def commented_block(text: str, start: str) -> str:
    """The commented lines after the comment line starting with ``start``, up to a blank line,
    without their ``#``."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    block = []
    for line in lines[first:]:
        if not line.strip():
            break
        block.append(line[1:])
    return "\n".join(block)


def test_the_vector_example_shows_a_second_node_s_source() -> None:
    text = read("vector.toml.example")
    block = commented_block(text, "# [sources.kata_events_scn1]")
    second = tomllib.loads(block)["sources"]["kata_events_scn1"]
    first = tomllib.loads(text)["sources"]["kata_events"]
    assert second["command"] == first["command"][:-1] + ["/etc/kata-events/scn1/config.toml"]
    assert {k: v for k, v in second.items() if k != "command"} == {
        k: v for k, v in first.items() if k != "command"
    }
    assert 'inputs = ["kata_events", "kata_events_scn1"]' in text


def test_the_fluent_bit_example_shows_a_second_node_s_input() -> None:
    from test_examples import exec_inputs

    lines = read("fluent-bit.conf.example").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#   [INPUT]"))
    second: Dict[str, str] = {}
    for line in lines[first + 1 :]:
        if not line.startswith("#   "):
            break
        words = line[4:].strip()
        if words and not words.startswith("#"):
            key, value = words.split(None, 1)
            second[key.lower()] = value.strip()
    active = exec_inputs()[0]
    assert second["command"] == active["command"].replace(
        "/etc/kata-events/config.toml", "/etc/kata-events/scn1/config.toml"
    )
    assert {k: v for k, v in second.items() if k != "command"} == {
        k: v for k, v in active.items() if k != "command"
    }


def test_docs_distributed_is_linked_and_names_what_the_code_does() -> None:
    doc = read("docs/distributed.md")
    assert "(docs/distributed.md)" in read("README.md")
    assert "(distributed.md)" in read("docs/operations.md")
    for needed in (
        "kata-events init --dir /etc/kata-events/",
        "kata-events@",
        "--config /etc/kata-events",
        "lag_",
        "textfile",
        options.BY_NAME["name"].flag,
        '"node"',
    ):
        assert needed in doc, needed
