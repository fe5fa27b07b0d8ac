"""The delivery ledger's counters: writes are counted, and the oldest unacknowledged write is dated."""

from __future__ import annotations

import pytest

from kata_events.delivery.ledger import DeliveryLedger


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
