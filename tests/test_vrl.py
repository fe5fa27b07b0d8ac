"""The Vector example's VRL, compiled and run by Vector's own VRL compiler (pyVRL embeds it).

Every VRL program and condition in ``vector.toml.example`` and in the ```toml blocks of the docs
(``route`` conditions, ``filter`` conditions, ``remap`` sources) must compile; the example's
``route`` conditions are run on an event as Vector's ``exec`` source makes it from a stdout line (an
event) and from a stderr line (a kata-events log line) and must send each to its own output; the
docs' ``remap`` that sets the event time from ``Timestamp`` must give the right instant.

pyVRL publishes wheels for CPython 3.11 on x86-64 only (it is a test extra with that marker): on
any other interpreter the whole module is skipped, with the reason in pytest's ``-ra`` summary.
"""

from __future__ import annotations

import datetime
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from kata_events.config.sources import tomllib

try:
    import pyvrl
except ImportError:  # not installed here (or its wheel does not load): the 3.11 run compiles the VRL
    pytest.skip(
        "pyVRL (Vector's VRL compiler for Python) is not installed: it publishes wheels for CPython "
        f"3.11 on x86-64 only, this is {platform.python_implementation()} "
        f"{'.'.join(map(str, sys.version_info[:3]))} on {platform.machine()}",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "vector.toml.example"


def _programs(config: Dict[str, Any], where: str) -> Iterator[Tuple[str, str, str]]:
    """(where, kind, VRL) for every VRL program and condition in a Vector configuration."""
    for name, transform in config.get("transforms", {}).items():
        kind = transform.get("type")
        if kind == "route":
            for output, condition in transform.get("route", {}).items():
                source = condition if isinstance(condition, str) else condition.get("source")
                if isinstance(condition, dict):
                    assert condition.get("type", "vrl") == "vrl", f"{where}: {name}.{output} is not VRL"
                yield f"{where}: transforms.{name}.route.{output}", "condition", source
        elif kind == "filter":
            condition = transform["condition"]
            source = condition if isinstance(condition, str) else condition.get("source")
            yield f"{where}: transforms.{name}.condition", "condition", source
        elif kind == "remap":
            yield f"{where}: transforms.{name}.source", "program", transform["source"]


def _doc_configs() -> Iterator[Tuple[str, Dict[str, Any]]]:
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for number, block in enumerate(re.findall(r"^```toml\n(.*?)^```", text, re.M | re.S), 1):
            yield f"{page.relative_to(ROOT)} toml block {number}", tomllib.loads(block)


def _all_programs() -> List[Tuple[str, str, str]]:
    found = list(_programs(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")), EXAMPLE.name))
    for where, config in _doc_configs():
        found += _programs(config, where)
    return found


PROGRAMS = _all_programs()

#: An event line as kata-events writes it, decoded by the exec source's JSON codec, with the
#: metadata the exec source adds (``stream`` = the pipe it came from).
STDOUT_EVENT: Dict[str, Any] = {
    "EventType": "process",
    "Timestamp": 1733562000123456,
    "HostName": "WS-042",
    "UserName": "CORP\\Иванов",
    "FileName": "C:\\Users\\Иванов\\Загрузки\\отчёт.exe",
    "Ioa": {"Severity": "High", "Rules": [{"Id": "r1", "Techniques": ["T1059"]}]},
    "host": "collector-1",
    "pid": 4242,
    "command": ["/usr/local/bin/kata-events", "run", "--config", "/etc/kata-events/config.toml"],
    "source_type": "exec",
    "stream": "stdout",
}
#: One of kata-events' own log lines (stderr), as the exec source hands it on.
STDERR_EVENT: Dict[str, Any] = {
    "time": "2024-12-07T09:00:00.123Z",
    "level": "warning",
    "event": "unauthorized",
    "message": "HTTP 401: approve external system ... in the Central Node web interface",
    "host": "collector-1",
    "pid": 4242,
    "command": ["/usr/local/bin/kata-events", "run", "--config", "/etc/kata-events/config.toml"],
    "source_type": "exec",
    "stream": "stderr",
}


def _compile(where: str, source: str) -> Any:
    try:
        return pyvrl.Transform(source)
    except ValueError as exc:
        raise AssertionError(f"{where} does not compile:\n{source}\n{exc}") from None


def test_the_example_and_the_docs_have_vrl_to_compile() -> None:
    places = {where.split(":")[0] for where, _, _ in PROGRAMS}
    assert EXAMPLE.name in places and any(p.startswith("docs/siem.md") for p in places), places
    assert sum(kind == "condition" for _, kind, _ in PROGRAMS) >= 2


@pytest.mark.parametrize("where, kind, source", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_every_vrl_program_and_condition_compiles(where: str, kind: str, source: str) -> None:
    program = _compile(where, source)
    if kind == "condition":
        # Vector requires a condition to resolve to a boolean.
        for event in (STDOUT_EVENT, STDERR_EVENT):
            result = program.remap(dict(event))
            assert isinstance(result, bool), f"{where} gives {result!r}, not a boolean"


def test_the_example_routes_a_stdout_line_to_the_siem_and_a_stderr_line_to_the_log_file() -> None:
    config = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    routes = config["transforms"]["kata_events_split"]["route"]
    results = {
        output: (
            _compile(output, condition).remap(dict(STDOUT_EVENT)),
            _compile(output, condition).remap(dict(STDERR_EVENT)),
        )
        for output, condition in routes.items()
    }
    assert results == {"events": (True, False), "logs": (False, True)}, results
    # The outputs the sinks read are the ones the route makes.
    inputs = {name: sink["inputs"] for name, sink in config["sinks"].items()}
    assert inputs == {
        "siem": ["kata_events_split.events"],
        "archive": ["kata_events_split.events"],
        "kata_events_logs": ["kata_events_split.logs"],
    }


def test_the_docs_remap_sets_the_event_time_from_timestamp_in_microseconds() -> None:
    remaps = [source for where, kind, source in PROGRAMS if "siem.md" in where and kind == "program"]
    assert remaps, "docs/siem.md shows no remap"
    (source,) = [s for s in remaps if "Timestamp" in s]
    # The program as shown, then the event itself as the value to look at.
    event = _compile("docs/siem.md remap", source + "\n.").remap(dict(STDOUT_EVENT))
    expected = datetime.datetime(2024, 12, 7, 9, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    assert event["timestamp"] == expected, event.get("timestamp")
    assert event["Timestamp"] == STDOUT_EVENT["Timestamp"]  # the event's own field is kept
    # An event without an integer Timestamp passes unchanged (no error drops it).
    without = _compile("docs/siem.md remap", source + "\n.").remap({"EventType": "process"})
    assert "timestamp" not in without
