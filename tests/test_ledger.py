"""The delivery ledger: tokens are released only for what the consumer has taken, in order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kata_events.delivery.ledger import DeliveryLedger


def test_ack_of_only_a_subset_of_a_page_releases_nothing():
    ledger = DeliveryLedger()
    ledger.wrote(5)
    ledger.page_end("t1")
    assert ledger.taken(4) is None
    assert ledger.pending_pages == 1
    assert ledger.committed is None
    assert ledger.taken(5) == "t1"
    assert ledger.committed == "t1"


def test_an_empty_pages_token_is_released_once_everything_before_it_is_taken():
    ledger = DeliveryLedger()
    ledger.wrote(3)
    ledger.page_end("t1")
    ledger.page_end("t2-empty")
    assert ledger.taken(2) is None
    assert ledger.taken(3) == "t2-empty"


def test_an_empty_page_after_everything_was_taken_is_released_by_release():
    ledger = DeliveryLedger()
    ledger.wrote(3)
    ledger.page_end("t1")
    assert ledger.taken(3) == "t1"
    ledger.page_end("t2-empty")
    assert ledger.pending == "t2-empty"
    assert ledger.committed == "t1"
    assert ledger.release() == "t2-empty"
    assert ledger.release() is None


def test_asking_again_at_the_same_position_releases_a_page_ended_since():
    ledger = DeliveryLedger()
    ledger.wrote(2)
    assert ledger.taken(2) is None
    ledger.page_end("t1")
    assert ledger.taken(ledger.taken_position) == "t1"


def test_the_very_first_empty_page_is_released_at_position_zero():
    ledger = DeliveryLedger()
    ledger.page_end("t0")
    assert ledger.taken(0) == "t0"


def test_a_failed_partial_pages_lines_are_counted_but_release_no_token():
    ledger = DeliveryLedger()
    ledger.wrote(4)
    ledger.page_end("t1")
    ledger.wrote(3)  # page 2 fails mid-body: no page_end for it
    assert ledger.taken(7) == "t1"
    assert ledger.pending_pages == 0
    ledger.wrote(5)  # page 2 fetched again in full
    ledger.page_end("t2")
    assert ledger.written == 12
    assert ledger.taken(11) is None
    assert ledger.taken(12) == "t2"


def test_taken_beyond_written_is_rejected():
    ledger = DeliveryLedger()
    ledger.wrote(2)
    ledger.page_end("t1")
    with pytest.raises(ValueError, match="3 units taken but only 2"):
        ledger.taken(3)
    assert ledger.taken_position == 0
    assert ledger.taken(2) == "t1"


def test_taken_going_backwards_is_ignored():
    ledger = DeliveryLedger()
    ledger.wrote(10)
    ledger.page_end("t1")
    ledger.wrote(10)
    ledger.page_end("t2")
    assert ledger.taken(15) == "t1"
    assert ledger.taken(5) is None
    assert ledger.taken_position == 15
    assert ledger.unacked == 5


def test_several_pages_taken_at_once_release_only_the_newest():
    ledger = DeliveryLedger()
    for i in range(3):
        ledger.wrote(2)
        ledger.page_end(f"t{i}")
    assert ledger.pending_pages == 3
    assert ledger.taken(6) == "t2"
    assert ledger.pending_pages == 0


def test_a_negative_write_is_rejected():
    with pytest.raises(ValueError):
        DeliveryLedger().wrote(-1)


def test_unacked_since_is_the_write_time_of_the_oldest_untaken_unit():
    ledger = DeliveryLedger()
    assert ledger.unacked_since() is None
    ledger.wrote(3, now=100.0)
    ledger.wrote(3, now=100.0)
    ledger.wrote(4, now=105.0)
    assert ledger.unacked_since() == 100.0
    ledger.taken(5)
    assert ledger.unacked_since() == 100.0
    ledger.taken(6)
    assert ledger.unacked_since() == 105.0
    assert ledger.unacked_age(now=110.0) == 5.0
    ledger.taken(10)
    assert ledger.unacked_since() is None
    assert ledger.unacked_age(now=200.0) == 0.0


# -- properties -----------------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("wrote"), st.integers(0, 20)),
        st.tuples(st.just("page_end"), st.none()),
        st.tuples(st.just("taken"), st.floats(0, 1)),  # a fraction of the written position
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_released_tokens_are_covered_in_order_and_the_last_one_comes_out(ops):
    ledger = DeliveryLedger()
    page_ends = {}  # token -> position of its page end
    released = []
    next_token = 0
    for op, arg in ops:
        if op == "wrote":
            ledger.wrote(arg)
        elif op == "page_end":
            token = f"t{next_token}"
            next_token += 1
            page_ends[token] = ledger.written
            ledger.page_end(token)
        else:
            position = int(arg * ledger.written)
            token = ledger.taken(position)
            if token is not None:
                assert page_ends[token] <= ledger.taken_position
                released.append(token)
        assert ledger.unacked == ledger.written - ledger.taken_position >= 0
    order = [int(t[1:]) for t in released]
    assert order == sorted(set(order)), "tokens released out of order or twice"
    final = ledger.taken(ledger.written)
    if final is not None:
        released.append(final)
    if next_token:
        assert released[-1] == f"t{next_token - 1}"
    assert ledger.pending_pages == 0


class LedgerMachine(RuleBasedStateMachine):
    """Compare the ledger with a plain list of page ends, step by step."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = DeliveryLedger()
        self.written = 0
        self.taken_at = 0
        self.marks = []  # (position, token) not yet released
        self.last_released = -1
        self.counter = 0

    @rule(n=st.integers(0, 50))
    def write(self, n):
        self.ledger.wrote(n)
        self.written += n

    @rule()
    def end_page(self):
        token = f"t{self.counter}"
        self.counter += 1
        self.ledger.page_end(token)
        self.marks.append((self.written, token))

    @precondition(lambda self: self.written > 0)
    @rule(data=st.data())
    def take(self, data):
        position = data.draw(st.integers(0, self.written))
        got = self.ledger.taken(position)
        self.taken_at = max(self.taken_at, position)
        self._check_release(got)

    @rule()
    def ask_again(self):
        self._check_release(self.ledger.release())

    @rule(extra=st.integers(1, 10))
    def take_too_far(self, extra):
        with pytest.raises(ValueError):
            self.ledger.taken(self.written + extra)

    def _check_release(self, got):
        releasable = [t for p, t in self.marks if p <= self.taken_at]
        expected = releasable[-1] if releasable else None
        assert got == expected
        self.marks = [(p, t) for p, t in self.marks if p > self.taken_at]
        if got is not None:
            number = int(got[1:])
            assert number > self.last_released
            self.last_released = number

    @invariant()
    def counters_agree(self):
        assert self.ledger.written == self.written
        assert self.ledger.taken_position == self.taken_at
        assert self.ledger.pending_pages == len(self.marks)


LedgerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_ledger_matches_a_simple_model = LedgerMachine.TestCase
