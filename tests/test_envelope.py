"""The answer's envelope is checked against the published `pages.ENVELOPE_SCHEMA`: continuationToken a
non-empty string, events an array; every other top-level key is harmless, whatever it holds. The
envelope is what the splitter leaves of a page (``events`` emptied), so the check never sees an event.
"""

from __future__ import annotations

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from kata_events.source.pages import ENVELOPE_SCHEMA, envelope_problem
from kata_events.source.stream import PageSplitter

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(ENVELOPE_SCHEMA)


@given(
    extra=st.dictionaries(
        st.text(max_size=12).filter(lambda k: k not in ENVELOPE_SCHEMA["properties"]), _JSON
    )
)
def test_unknown_top_level_keys_are_harmless(extra) -> None:
    assert envelope_problem({**extra, "continuationToken": "t", "events": []}) is None


@given(token=_JSON.filter(lambda v: not isinstance(v, str)))
def test_a_token_that_is_not_a_string_is_named(token) -> None:
    assert envelope_problem({"continuationToken": token, "events": []}) == "continuationToken is not a string"


def test_missing_keys_and_events_that_are_not_an_array_are_named() -> None:
    assert envelope_problem({"events": []}) == "no continuationToken"
    assert envelope_problem({"continuationToken": "t"}) == "no events"
    assert envelope_problem({"continuationToken": "", "events": []}).startswith("continuationToken:")
    # (The splitter refuses events that are not an array first, as it meets them.)
    assert envelope_problem({"continuationToken": "t", "events": {"a": 1}}).startswith("events: ")


def test_a_real_page_envelope_passes_without_its_events() -> None:
    splitter = PageSplitter(1 << 20)
    events = splitter.feed(
        b'{"x": [1, {"y": null}], "events": [{"a": 1}, {"b": 2}], "continuationToken": "t"}'
    )
    assert len(events) == 2
    assert envelope_problem(splitter.close()) is None
