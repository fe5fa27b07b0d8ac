"""A request failing the same way for minutes gets the fix `check` would name in its retry line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kata_events.failures import PERSISTENT_AFTER, RepeatedFault, persistent_advice
from kata_events.source.errors import Unavailable

REFUSED = Unavailable("cannot connect to https://cn.example.local:8443: Connection refused")
BUSY = Unavailable("HTTP 503 from https://cn.example.local:8443: busy", reason="http_error")


def test_the_same_failure_counts_as_lasting_only_after_a_few_minutes():
    fault = RepeatedFault()
    assert fault.seen(REFUSED, 1000.0) == 0
    assert fault.seen(REFUSED, 1000.0 + PERSISTENT_AFTER - 1) == 0
    assert fault.seen(REFUSED, 1000.0 + PERSISTENT_AFTER + 20) == PERSISTENT_AFTER + 20


def test_another_failure_or_an_answer_starts_the_count_again():
    fault = RepeatedFault()
    fault.seen(REFUSED, 0.0)
    assert fault.seen(BUSY, PERSISTENT_AFTER + 1) == 0
    fault.clear()
    assert fault.seen(REFUSED, 2 * PERSISTENT_AFTER + 2) == 0


@given(st.lists(st.floats(min_value=0.1, max_value=60.0), min_size=1, max_size=30))
def test_the_words_of_the_message_do_not_make_it_another_failure(delays):
    fault = RepeatedFault()
    first = now = delays[0]
    for delay in delays:
        timeout = Unavailable(f"https://cn:443 did not answer within {delay:.0f} s", reason="timeout")
        lasted = fault.seen(timeout, now)
        assert lasted == (now - first if now - first >= PERSISTENT_AFTER else 0)
        now += delay


def test_a_refused_connection_names_the_address_the_port_and_the_fix():
    advice = persistent_advice(REFUSED, ["https://cn.example.local:8443", "https://cn2.example.local"], 200)
    assert "failing the same way for 3 min" in advice
    assert "cn.example.local port 8443" in advice and "cn2.example.local port 443" in advice
    assert "address and port in url" in advice and "firewalls" in advice and "kata-events check" in advice


def test_server_errors_point_at_the_central_node_not_the_configuration():
    advice = persistent_advice(BUSY, ["https://cn"], 400)
    assert "answers, with errors" in advice and "address and port" not in advice


def test_a_failure_after_an_answer_points_at_check_not_at_the_address():
    broken = Unavailable("the connection broke after 10 bytes of the page: reset", answered=True)
    advice = persistent_advice(broken, ["https://cn"], 400)
    assert "kata-events check" in advice and "address and port" not in advice
