"""The emulator's filter language: parsing, semantics, and syntax errors with their column."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kata_events.emulator.events import EventFactory
from kata_events.emulator.filters import FilterSyntaxError, compile_filter

EVENT = {
    "EventType": "process",
    "HostName": "WS-ACC-017",
    "HostIp": "10.20.3.17",
    "UserName": "CORP\\иванов.п",
    "FileName": "C:\\Windows\\System32\\cmd.exe",
    "CommandLine": 'cmd.exe /c "echo it\'s {done}"',
    "RemotePort": 443,
    "Ratio": 0.5,
    "Flag": True,
    "Ioa": {
        "Severity": "High",
        "Confidence": "Medium",
        "Rules": [
            {
                "Id": "r1",
                "Name": "PowerShell",
                "Techniques": ["T1059", "T1059.001"],
                "Tactics": ["Execution"],
            },
            {"Id": "r2", "Name": "Run key", "Techniques": ["T1547"], "Tactics": ["Persistence"]},
        ],
    },
}


def matches(text: str, event: object = EVENT) -> bool:
    compiled = compile_filter(text)
    assert compiled is not None
    return compiled.matches(event)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("EventType == 'process'", True),
        ("EventType == 'Process'", False),  # case-sensitive values
        ("EventType != 'process'", False),
        ("EventType != 'module'", True),
        ("Ioa.Severity == 'High'", True),
        ("Ioa.Severity == 'Low'", False),
        ("HostIp == '10.20.3.17'", True),
        ("RemotePort == 443", True),
        ("RemotePort == 443.0", True),
        ("RemotePort == '443'", False),  # a string never equals a number
        ("Ratio == 0.5", True),
        ("Flag == 1", False),  # booleans are not numbers
        ("UserName == 'CORP\\иванов.п'", True),  # backslash is literal
        ("UserName contains 'иванов'", True),
        ("FileName contains 'System32\\cmd'", True),
        ("CommandLine contains 'it''s {done}'", True),  # doubled quote is one quote
        ("Ioa.Rules.Techniques contains 'T1059'", True),
        ("Ioa.Rules.Techniques contains 'T1059.001'", True),
        ("Ioa.Rules.Techniques contains 'T105'", False),  # membership, not substring, on a list
        ("Ioa.Rules.Techniques contains 'T1547'", True),  # any element of the Rules list
        ("Ioa.Rules.Techniques == 'T1547'", True),  # == on a list: any element
        ("Ioa.Rules.Name == 'Run key'", True),
        ("Ioa.Rules.Name contains 'Shell'", True),
        ("Ioa.Rules.Id == 'r3'", False),
        ("Missing == 'x'", False),
        ("Missing != 'x'", True),  # a missing field compares unequal
        ("Missing contains 'x'", False),
        ("Ioa.Missing.Deeper == 'x'", False),
        ("HostName.Sub == 'x'", False),  # path through a string
        ("RemotePort contains '4'", False),
        ("EventType == 'process' and Ioa.Severity == 'High'", True),
        ("EventType == 'process' and Ioa.Severity == 'Low'", False),
        ("EventType == 'module' or Ioa.Severity == 'High'", True),
        ("not EventType == 'module'", True),
        ("not not EventType == 'module'", False),
        ("EventType == 'x' or EventType == 'y' or RemotePort == 443", True),
        ("EventType == 'process' AND (Ioa.Severity == 'Low' OR Ioa.Severity == 'High')", True),
        ("EventType == 'process' And Not (Ioa.Severity == 'Low')", True),
        ("HostName CONTAINS 'ACC'", True),
        ("((EventType == 'process'))", True),
        ("  EventType=='process'  ", True),
        ("RemotePort == -1", False),
    ],
)
def test_filter_semantics(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_and_binds_tighter_than_or() -> None:
    # true or (false and false) == true; (true or false) and false == false
    assert matches("EventType == 'process' or EventType == 'x' and EventType == 'y'") is True
    assert matches("(EventType == 'process' or EventType == 'x') and EventType == 'y'") is False


def test_not_binds_tighter_than_and() -> None:
    assert matches("not EventType == 'x' and EventType == 'process'") is True
    assert matches("not (EventType == 'process' and EventType == 'x')") is True


def test_blank_filter_means_no_filter() -> None:
    assert compile_filter(None) is None
    assert compile_filter("") is None
    assert compile_filter("   ") is None


def test_uses_field_tells_whether_per_event_fields_are_read() -> None:
    compiled = compile_filter("EmulatorSeq == 3 or Ioa.Severity == 'High'")
    assert compiled is not None
    assert compiled.uses_field("EmulatorSeq")
    assert compiled.uses_field("Ioa")
    assert not compiled.uses_field("Timestamp")


@pytest.mark.parametrize(
    "text, column, fragment",
    [
        ("(Ioa.Severity == 'High'))", 25, "unexpected token ')'"),
        ("EventType == 'process", 14, "unterminated string"),
        ("EventType = 'process'", 11, "unknown operator '='"),
        ("EventType == process", 14, "expected a quoted string or a number"),
        ("EventType ==", 13, "end of filter"),
        ("EventType", 10, "expected ==, != or contains"),
        ("== 'x'", 1, "expected a field name"),
        ("(EventType == 'x'", 18, "expected ')' to close '(' from column 1"),
        ("()", 2, "empty parentheses"),
        ("EventType == 'x' and", 21, "expected a field name"),
        ("EventType == 'x' or or EventType == 'y'", 21, "expected a field name"),
        ("EventType == 'x' EventType == 'y'", 18, "unexpected token 'EventType'"),
        ("Ioa. == 'x'", 4, "cannot end with '.'"),
        ("Port == 12ab", 9, "malformed number"),
        ("EventType == 'x' # comment", 18, "unexpected character '#'"),
        ("EventType < 3", 11, "unknown operator '<'"),
        ("not", 4, "expected a field name"),
    ],
)
def test_syntax_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        compile_filter(text)
    assert info.value.column == column
    assert fragment in str(info.value)
    assert str(info.value).endswith(f"at column {column}")


# -- properties -----------------------------------------------------------------------------------

_names = st.sampled_from(
    ["EventType", "HostName", "Ioa.Severity", "Ioa.Rules.Techniques", "RemotePort", "Nope"]
)
_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.integers(min_value=-(10**6), max_value=10**6),
)


def _quote(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


@st.composite
def _expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 2 or draw(st.booleans()):
        op = draw(st.sampled_from(["==", "!=", "contains", "CONTAINS"]))
        return f"{draw(_names)} {op} {_quote(draw(_values))}"
    kind = draw(st.sampled_from(["and", "or", "not", "paren"]))
    if kind == "not":
        return f"not {draw(_expressions(depth + 1))}"
    if kind == "paren":
        return f"({draw(_expressions(depth + 1))})"
    return f"{draw(_expressions(depth + 1))} {kind} {draw(_expressions(depth + 1))}"


@given(_expressions())
def test_every_generated_expression_parses_and_evaluates(text: str) -> None:
    compiled = compile_filter(text)
    assert compiled is not None
    assert compiled.matches(EVENT) in (True, False)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_any_string_round_trips_through_quoting(value: str) -> None:
    event = {"Field": value}
    assert matches(f"Field == {_quote(value)}", event)
    assert not matches(f"Field != {_quote(value)}", event)
    assert matches(f"Field contains {_quote(value)}", event)


@given(_expressions())
def test_not_equals_is_the_negation_of_equals(text: str) -> None:
    compiled = compile_filter(text)
    negated = compile_filter(f"not ({text})")
    assert compiled is not None and negated is not None
    assert compiled.matches(EVENT) is not negated.matches(EVENT)


@given(st.text(max_size=25))
def test_garbage_either_parses_or_raises_a_syntax_error_with_a_column_inside(text: str) -> None:
    try:
        compiled = compile_filter(text)
    except FilterSyntaxError as exc:
        assert 1 <= exc.column <= len(text) + 1
    else:
        if compiled is not None:
            compiled.matches(EVENT)


def test_filters_agree_with_the_served_event_bytes() -> None:
    # Evaluating against the factory's dict and against the parsed bytes must be the same thing.
    factory = EventFactory(seed=7, event_bytes=800, templates=64)
    compiled = compile_filter("Ioa.Rules.Techniques contains 'T1059' or UserName contains 'иванов'")
    assert compiled is not None
    hits = 0
    for template in range(factory.count):
        parsed = json.loads(factory.encode(template + 1, 1_700_000_000_000_000, template))
        expected = compiled.matches(factory.event_dict(template + 1, 1_700_000_000_000_000, template))
        assert compiled.matches(parsed) is expected
        hits += expected
    assert 0 < hits < factory.count
