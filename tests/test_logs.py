"""Log lines are named events from one catalogue, on stderr only, as JSON lines or text."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kata_events import logs

PACKAGE = Path(logs.__file__).resolve().parent
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logger():
    """setup_logging changes a process-wide logger: put it back for the other tests."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def lines_of(stream: io.StringIO) -> list:
    return stream.getvalue().splitlines()


def json_lines(stream: io.StringIO) -> list:
    return [json.loads(line) for line in lines_of(stream)]


def test_json_line_carries_time_level_event_message_and_fields():
    out = io.StringIO()
    logs.setup_logging("debug", "json", stream=out)
    logs.emit(
        "page",
        "page of 3 events delivered",
        events=3,
        bytes=2048,
        seconds=0.25,
        url="https://cn",
        lag_seconds=None,
    )
    (record,) = json_lines(out)
    assert list(record)[:4] == ["time", "level", "event", "message"]
    assert ISO_MS.match(record["time"])
    assert record["level"] == "debug" and record["event"] == "page"
    assert record["message"] == "page of 3 events delivered"
    assert record["events"] == 3 and record["bytes"] == 2048 and record["url"] == "https://cn"
    assert "lag_seconds" not in record  # None means "not known": left out
    assert not {"name", "pathname", "lineno", "taskName", "msg"} & set(record)


def test_json_keeps_non_ascii_as_is():
    out = io.StringIO()
    logs.setup_logging("info", "json", stream=out)
    logs.emit("subscription_new", "новая подписка", filter="UserName == 'Иванов'")
    raw = out.getvalue()
    assert "новая подписка" in raw and "Иванов" in raw and "\\u" not in raw
    assert json_lines(out)[0]["filter"] == "UserName == 'Иванов'"


def test_json_values_are_made_plain():
    out = io.StringIO()
    logs.setup_logging("debug", "json", stream=out)
    logs.emit("start", "starting", state_file=Path("/var/lib/x.token"), urls=(1, 2))
    record = json_lines(out)[0]
    assert record["state_file"] == "/var/lib/x.token" and record["urls"] == [1, 2]


def test_exception_text_is_one_json_field():
    out = io.StringIO()
    logs.setup_logging("info", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger(logs.LOGGER_NAME).exception("unexpected", extra={"event": "fatal"})
    (record,) = json_lines(out)
    assert record["event"] == "fatal" and "RuntimeError: boom" in record["exc_info"]


def test_text_format_for_people():
    out = io.StringIO()
    logs.setup_logging("info", "text", stream=out)
    logs.emit(
        "unauthorized",
        "approve this external system",
        url="https://cn:443",
        fingerprint="ab cd",
        external_system_id="Иван",
    )
    (line,) = lines_of(out)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ERROR unauthorized: approve this external system "
        r'url=https://cn:443 fingerprint="ab cd" external_system_id=Иван',
        line,
    ), line


def test_text_format_shows_booleans_and_lists_readably():
    out = io.StringIO()
    logs.setup_logging("info", "text", stream=out)
    logs.emit("lag", "behind", lag_seconds=4000.5, limit=3600, full_page=True)
    logs.emit("start", "starting", urls=["https://a", "https://b"], filter="")
    first, second = lines_of(out)
    assert first.endswith("lag_seconds=4000.5 limit=3600 full_page=true")
    assert second.endswith('urls=["https://a", "https://b"] filter=""')


def test_level_comes_from_the_catalogue_and_may_be_overridden():
    out = io.StringIO()
    logs.setup_logging("info", "json", stream=out)
    logs.emit("page", "empty page", level="DEBUG", events=0)
    logs.emit("retry", "retrying", delay=1.5)
    logs.emit("page", "page", level=logging.WARNING, events=1)
    assert [(r["event"], r["level"]) for r in json_lines(out)] == [("retry", "warning"), ("page", "warning")]


def test_log_level_filters():
    out = io.StringIO()
    logs.setup_logging("warning", "json", stream=out)
    logs.emit("stats", "counters", events=1)
    logs.emit("lag", "behind", lag_seconds=5000)
    assert [r["event"] for r in json_lines(out)] == ["lag"]


def test_setting_up_twice_does_not_double_lines():
    first, second = io.StringIO(), io.StringIO()
    logs.setup_logging("info", "json", stream=first)
    logs.setup_logging("info", "text", stream=second)
    logs.emit("approved", "approved")
    assert first.getvalue() == "" and len(lines_of(second)) == 1


def test_an_undeclared_field_or_event_is_logged_with_a_note():
    out = io.StringIO()
    logs.setup_logging("debug", "json", stream=out)
    logs.emit("page", "typo", evnts=3, events=1)
    logs.emit("pgae", "typo")
    first, second = json_lines(out)
    assert first["evnts"] == 3 and "evnts" in first["undeclared"]
    assert second["event"] == "pgae" and second["level"] == "warning"


def test_catalogue_refuses_reserved_field_names():
    with pytest.raises(ValueError, match="reserved"):
        logs.EventSpec("x", logging.INFO, ("message", "name"), "clashes with LogRecord")


def test_stdout_is_refused():
    with pytest.raises(ValueError, match="stdout"):
        logs.setup_logging("info", "json", stream=sys.stdout)


def test_nothing_reaches_stdout(capfd):
    logs.setup_logging("debug", "json")  # the default stream: stderr
    for name, spec in logs.EVENTS.items():
        logs.emit(name, f"{name} happened", **{field: 1 for field in spec.fields})
    out, err = capfd.readouterr()
    assert out == ""
    assert [json.loads(line)["event"] for line in err.splitlines()] == list(logs.EVENTS)


def test_a_real_process_keeps_stdout_clean():
    code = (
        "from kata_events import logs\n"
        "logs.setup_logging('info', 'text')\n"
        "logs.emit('start', 'старт', version='1')\n"
        "logs.emit('stop', 'stopping', reason='done', exit_code=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == b""
    err = done.stderr.decode("utf-8").splitlines()
    assert len(err) == 2 and " INFO start: старт version=1" in err[0] and "exit_code=0" in err[1]


def test_troubleshooting_table_lists_every_event():
    table = logs.troubleshooting_table()
    for name, spec in logs.EVENTS.items():
        level = logging.getLevelName(spec.level).lower()
        assert f"| `{name}` | {level} | " in table
    assert len(table.splitlines()) == len(logs.EVENTS) + 2


REQUIRED_EVENTS = (
    "start",
    "config",
    "mode",
    "page",
    "commit",
    "retry",
    "unauthorized",
    "subscription_lost",
    "subscription_new",
    "filter_changed",
    "bad_request",
    "bad_response",
    "tls_verify_failed",
    "insecure",
    "lag",
    "stats",
    "ack_timeout",
    "ack_protocol",
    "consumer_gone",
    "stop",
    "line_too_long",
)


def test_catalogue_has_the_documented_events():
    assert set(REQUIRED_EVENTS) <= set(logs.EVENTS)
    for spec in logs.EVENTS.values():
        assert spec.description and spec.level in logs.LEVELS.values()


def _emit_calls():
    """Every ``emit("name", ..., field=...)`` call in the package with a literal event name."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called != "emit" or not node.args:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                fields = [k.arg for k in node.keywords if k.arg not in (None, "level")]
                yield f"{path.relative_to(PACKAGE)}:{node.lineno}", first.value, fields


def test_every_declared_field_is_passed_by_some_emit():
    """The catalogue says what the lines carry: a field no call passes is a promise nobody keeps.
    Events emitted with ``**fields`` (the stats lines, config, fatal) are left to their own tests."""
    passed: dict = {}
    for _, name, fields in _emit_calls():
        passed.setdefault(name, set()).update(fields)
    spread = {"config", "fatal", "stats", "stop"}
    unkept = {
        name: sorted(set(spec.fields) - passed.get(name, set()))
        for name, spec in logs.EVENTS.items()
        if name not in spread and set(spec.fields) - passed.get(name, set())
    }
    assert not unkept, unkept


def test_every_emit_in_the_package_uses_a_declared_event_and_fields():
    problems = []
    for where, name, fields in _emit_calls():
        spec = logs.EVENTS.get(name)
        if spec is None:
            problems.append(f"{where}: unknown event {name!r}")
        elif set(fields) - set(spec.fields):
            problems.append(f"{where}: {name!r} does not declare {sorted(set(fields) - set(spec.fields))}")
    assert not problems, "\n".join(problems)


def test_every_line_names_the_node_once_it_is_known():
    out, text = io.StringIO(), io.StringIO()
    logs.setup_logging("info", "json", stream=out, node="scn-msk")
    logs.emit("retry", "retrying", delay=1.5)
    (record,) = json_lines(out)
    assert list(record)[:5] == ["time", "level", "event", "message", "node"]
    assert record["node"] == "scn-msk" and record["delay"] == 1.5
    logs.setup_logging("info", "text", stream=text, node="scn-msk")
    logs.emit("lag", "behind", lag_seconds=4000.5)
    (line,) = lines_of(text)
    assert line.endswith("WARNING lag: behind node=scn-msk lag_seconds=4000.5"), line
    with pytest.raises(ValueError):
        logs.EventSpec("x", logging.INFO, ("node",), "a field may not take the node's place")
