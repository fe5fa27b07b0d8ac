"""Unit and property tests of the continuation-token check, and the emulator's token faults."""

from __future__ import annotations

import base64
import string

from hypothesis import given
from hypothesis import strategies as st

from kata_events.emulator.server import HUGE_TOKEN, ODD_TOKEN
from kata_events.source.tokens import MAX_TOKEN_CHARS, token_problem

_BAD_CHARS = " \t\r\n\"'<>\\`\x00\x7f\u00e9\u0416\u2028"


@given(st.binary(min_size=1, max_size=2048))
def test_base64_base64url_and_hex_tokens_pass(raw: bytes) -> None:
    for token in (base64.b64encode(raw), base64.urlsafe_b64encode(raw), raw.hex().encode()):
        assert token_problem(token.decode()) is None


def test_uuids_jwts_and_percent_encoded_tokens_pass() -> None:
    for token in (
        "6f1c1d7e-5a7b-4c1e-9d0a-1b2c3d4e5f60",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc-_DEF",
        "sub%3A42%2Fpos%3D1000",
        "a" * MAX_TOKEN_CHARS,
        string.ascii_letters + string.digits + "!#$%&()*+,-./:;=?@[]^_{|}~",
    ):
        assert token_problem(token) is None, token


@given(
    st.text(alphabet=string.ascii_letters + string.digits, max_size=50),
    st.sampled_from(_BAD_CHARS),
    st.text(alphabet=string.ascii_letters + string.digits, max_size=50),
)
def test_a_token_with_any_character_no_token_holds_fails_and_names_where(
    head: str, bad: str, tail: str
) -> None:
    problem = token_problem(head + bad + tail)
    assert problem is not None and f"position {len(head)}" in problem
    assert ascii(bad) in problem


def test_too_long_empty_or_not_a_string_fails_without_quoting_the_token() -> None:
    problem = token_problem("A" * (MAX_TOKEN_CHARS + 1))
    assert problem and str(MAX_TOKEN_CHARS + 1) in problem and "AAAA" not in problem
    assert token_problem("") == "it is empty"
    assert token_problem(None) and token_problem(12)


def test_the_emulators_bad_tokens_fail_the_check() -> None:
    assert "2097152 characters" in (token_problem(HUGE_TOKEN) or "")
    assert token_problem(ODD_TOKEN)


def test_the_emulator_answers_414_to_a_2_mib_request_line(client) -> None:
    response = client.get(timeout=30, continuation_token="A" * (2 << 20))
    assert response.status_code == 414
    assert client.page(max_events=1)["events"] is not None  # and keeps serving
