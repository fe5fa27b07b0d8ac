"""The delivery ledger's counters: the oldest unacknowledged write is dated."""

from __future__ import annotations

from kata_events.delivery.ledger import DeliveryLedger


def test_the_unacked_age_runs_from_the_write_of_the_oldest_untaken_unit():
    ledger = DeliveryLedger()
    assert ledger.unacked_age(now=100.0) == 0.0
    ledger.wrote(3, now=100.0)
    ledger.wrote(3, now=100.0)
    ledger.wrote(4, now=105.0)
    assert ledger.unacked_age(now=110.0) == 10.0
    ledger.taken(5)
    assert ledger.unacked_age(now=110.0) == 10.0
    ledger.taken(6)
    assert ledger.unacked_age(now=110.0) == 5.0
    ledger.taken(10)
    assert ledger.unacked_age(now=200.0) == 0.0
