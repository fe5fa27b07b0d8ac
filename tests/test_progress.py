"""Delivery points: the ledger's trail of checkpoints, the settle window, pieces, and the record on disk."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kata_events.delivery.ledger import DeliveryLedger
from kata_events.delivery.policies import make_delivery
from kata_events.delivery.writer import LineWriter, pieces
from kata_events.state.progress import EMPTY_DIGEST, Point, RecordError, decode_record, encode_record, joined
from kata_events.state.store import TokenStore

line = st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\n", b"x"))
page = st.lists(line, min_size=0, max_size=30)


def _feed(ledger: DeliveryLedger, pages: List[List[bytes]], limit: int) -> List[Tuple[int, Optional[str]]]:
    """Write ``pages`` in pieces of ``limit`` bytes; returns (start position, asked-with token) per page."""
    starts = []
    token: Optional[str] = "t-start"
    ledger.begin_page(token)
    for i, lines in enumerate(pages):
        starts.append((ledger.written, token))
        for data, count in pieces(lines, limit):
            ledger.wrote(len(data), 0.0, data, count)
        token = f"t{i}"
        ledger.begin_page(token)
    starts.append((ledger.written, token))
    return starts


@given(pages=st.lists(page, min_size=1, max_size=6), limit=st.integers(1, 200), data=st.data())
def test_a_point_never_claims_an_event_beyond_the_position_and_its_digest_is_of_those_events(
    pages: List[List[bytes]], limit: int, data: st.DataObject
) -> None:
    ledger = DeliveryLedger()
    starts = _feed(ledger, pages, limit)
    by_token = {token: (i, start) for i, (start, token) in enumerate(starts)}
    positions = sorted(data.draw(st.lists(st.integers(0, ledger.written), min_size=1, max_size=8)))
    for position in positions:
        point = ledger.point_at(position)
        assert point is not None and point.token in by_token
        index, start = by_token[point.token]
        lines = pages[index][: point.events] if index < len(pages) else []
        assert len(lines) == point.events
        # Every event the point claims lies wholly before the position.
        assert start + len(joined(lines)) <= position
        assert point.digest == hashlib.sha256(joined(lines)).hexdigest()
        # And it lags the position by at most one piece (or one line longer than a piece).
        if index < len(pages):
            rest = pages[index][point.events :]
            nearest = start + len(joined(lines))
            if rest and position - nearest > 0:
                ahead = len(joined(rest[:1]))
                assert position - nearest < max(limit, ahead) + ahead
        ledger.taken(position)  # forgetting what is taken leaves later points intact


def test_a_page_end_is_the_point_zero_events_into_its_token():
    ledger = DeliveryLedger()
    ledger.begin_page("t0")
    ledger.wrote(8, 0.0, b'{"a":1}\n', 1)
    ledger.begin_page("t1")
    assert ledger.point_at(8) == Point("t1", 0, EMPTY_DIGEST)
    assert ledger.point_at(7) == Point("t0", 0, EMPTY_DIGEST)


def test_a_resumed_page_counts_the_skipped_events_and_extends_their_digest():
    skipped = [b'{"a":1}', b'{"a":2}']
    hasher = hashlib.sha256(joined(skipped))
    ledger = DeliveryLedger()
    ledger.begin_page("t0", 2, hasher)
    more = [b'{"a":3}']
    ledger.wrote(8, 0.0, joined(more), 1)
    assert ledger.point_at(8) == Point("t0", 3, hashlib.sha256(joined(skipped + more)).hexdigest())


def test_writes_without_bytes_make_no_checkpoint():
    ledger = DeliveryLedger()
    ledger.begin_page("t0")
    ledger.wrote(5)
    assert ledger.point_at(5) == Point("t0")


@given(
    steps=st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 50)), min_size=1, max_size=40),
    settle=st.floats(0.1, 5.0),
    ask=st.floats(0.0, 10.0),
)
def test_the_settled_position_is_what_was_taken_settle_seconds_earlier_or_less(
    steps: List[Tuple[float, int]], settle: float, ask: float
) -> None:
    ledger = DeliveryLedger(settle=settle)
    ledger.begin_page("t0")
    now = 0.0
    position = 0
    history = [(0.0, 0)]
    for gap, more in steps:
        now += gap
        ledger.wrote(more + 1, now, b"x" * (more + 1), 1)
        position += more
        ledger.taken(position, now)
        history.append((now, position))
    when = now + ask
    settled = ledger.settled_position(when)
    old_enough = [p for t, p in history if t <= when - settle]
    truth = max(old_enough) if old_enough else 0
    assert settled <= truth, "a position younger than the settle time counted as settled"
    # Never more conservative than the newest dated advance old enough.
    assert settled == truth
    point = ledger.point_at(settled)
    assert point is not None and point.token == "t0"


@given(
    before=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 50)), min_size=1, max_size=30),
    after=st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(1, 50)), min_size=1, max_size=30),
    settle=st.floats(0.1, 3.0),
)
def test_takes_after_a_stop_was_asked_never_move_what_had_settled_at_the_stop(
    before: List[Tuple[float, int]], after: List[Tuple[float, int]], settle: float
) -> None:
    """A stop goes back from the moment it was asked for; the process may take seconds to unwind,
    and the reader may go on taking lines meanwhile: none of that may count as settled."""
    ledger = DeliveryLedger(settle=settle)
    ledger.begin_page("t0")
    now, position = 0.0, 0

    def take(gap: float, more: int) -> None:
        nonlocal now, position
        now += gap
        ledger.wrote(more, now, b"x" * more, 1)
        position += more
        ledger.taken(position, now)

    for gap, more in before:
        take(gap, more)
    stop = now
    ledger.freeze(stop)
    at_stop = ledger.settled_position(stop)
    for gap, more in after:
        take(gap, more)
    assert ledger.settled_position(stop) == at_stop


def test_a_stop_going_back_is_not_undone_by_the_drain_thread_closing(tmp_path: Path):
    """On a pipe: the reader took 50 lines long ago and 30 just before the stop; the stop records
    50, and nothing the drain thread sees while the delivery closes records more."""
    read_end, write_end = os.pipe()
    records: List[Tuple[str, int]] = []
    delivery = make_delivery(
        "none",
        LineWriter(write_end),
        lambda point: records.append(("commit", point.events)),
        lambda point, durable: records.append(("note", point.events)),
        settle=1.0,
    )
    try:
        delivery.recorder.start_from(Point("t0"))
        delivery.begin_page("t0")
        line = b'{"a":"' + b"x" * 90 + b'"}\n'
        for _ in range(100):
            delivery.write([line[:-1]])
        os.read(read_end, 50 * len(line))
        time.sleep(1.3)
        os.read(read_end, 30 * len(line))
        time.sleep(0.2)
        delivery.stop.ask("SIGTERM")
        delivery.finish(timeout=0.1)
        went_back = list(records)
        time.sleep(0.3)  # the drain thread polls again meanwhile
    finally:
        delivery.close()
        os.close(read_end)
    assert went_back[-1] == ("commit", 50), went_back
    assert records == went_back, f"recorded after going back: {records[len(went_back) :]}"


def test_without_settle_the_settled_position_is_the_taken_one():
    ledger = DeliveryLedger()
    ledger.wrote(10)
    ledger.taken(7, 1.0)
    assert ledger.settled_position(1.0) == 7


@given(st.lists(line, max_size=60), st.integers(1, 300), st.integers(1, 70))
def test_pieces_are_the_lines_as_written_cut_at_line_ends(lines: List[bytes], limit: int, most: int) -> None:
    got = list(pieces(lines, limit, most))
    assert b"".join(data for data, _ in got) == joined(lines)
    assert sum(count for _, count in got) == len(lines)
    for data, count in got:
        assert data.endswith(b"\n") and data.count(b"\n") == count
        assert len(data) <= limit or count == 1
        assert count <= most


def test_a_checkpoint_knows_the_lines_written_up_to_it():
    ledger = DeliveryLedger()
    ledger.begin_page(None)
    ledger.wrote(30, data=b"a\n" * 10, lines=10)
    ledger.wrote(60, data=b"b\n" * 20, lines=20)
    assert (ledger.lines, ledger.lines_at(29), ledger.lines_at(30), ledger.lines_at(89)) == (30, 0, 10, 10)
    assert ledger.lines_at(90) == 30
    assert ledger.point_at(90) == Point(None, 30, hashlib.sha256(b"a\n" * 10 + b"b\n" * 20).hexdigest())


def test_a_point_of_the_first_page_of_a_new_subscription_round_trips_without_a_token():
    data = encode_record(Point(None, 5, EMPTY_DIGEST), 3, {"external_system_id": "x", "filter": ""})
    assert decode_record(data)["token"] is None


# -- the record on disk ------------------------------------------------------------------------------


def test_a_record_round_trips_and_a_flipped_byte_is_caught():
    data = encode_record(Point("tok", 12, EMPTY_DIGEST), 7, {"external_system_id": "x", "filter": ""})
    fields = decode_record(data + b"    \n")
    assert (fields["seq"], fields["token"], fields["events"]) == (7, "tok", 12)
    broken = data.replace(b'"events":12', b'"events":13')
    with pytest.raises(RecordError):
        decode_record(broken)
    with pytest.raises(RecordError):
        decode_record(b"\0" * 40)


def _store(path: Path, filter: str = "") -> TokenStore:
    store = TokenStore(path, url="https://cn", external_system_id="id-1", filter=filter)
    store.open()
    return store


def test_the_newest_record_wins_whether_companion_or_state_file(tmp_path: Path):
    path = tmp_path / "s.token"
    store = _store(path)
    digest = hashlib.sha256(b"a\n").hexdigest()
    store.commit_point(Point("t1", 0))
    store.note(Point("t1", 1, digest))
    store.close()
    store = _store(path)
    assert store.load()[0] == "t1"
    assert store.resume_point() == (Point("t1", 1, digest), [])
    # A commit after the note is newer: it wins.
    store.commit_point(Point("t2", 0))
    store.close()
    store = _store(path)
    store.load()
    assert store.resume_point() == (Point("t2", 0), [])
    # A stop going back notes first (fsynced), then commits: both say the same.
    store.note(Point("t1", 1, digest), durable=True)
    store.commit_point(Point("t1", 1, digest))
    store.close()
    store = _store(path)
    store.load()
    assert store.resume_point() == (Point("t1", 1, digest), [])
    store.close()


def test_a_companion_ahead_with_a_newer_token_is_used(tmp_path: Path):
    # Killed between the note of a point in the next page and that page's commit.
    path = tmp_path / "s.token"
    store = _store(path)
    store.commit_point(Point("t1", 0))
    digest = hashlib.sha256(b"a\n").hexdigest()
    store.note(Point("t2", 1, digest))
    store.close()
    store = _store(path)
    store.load()
    assert store.resume_point() == (Point("t2", 1, digest), [])
    store.close()


def test_a_shorter_record_leaves_nothing_of_the_longer_one(tmp_path: Path):
    path = tmp_path / "s.token"
    store = _store(path)
    store.commit_point(Point("t1", 0))
    digest = hashlib.sha256(b"a\n").hexdigest()
    store.note(Point("t1-with-a-long-token-" + "x" * 100, 123456, digest))
    store.note(Point("t1", 1, digest))
    store.close()
    assert decode_record(store.files.progress.read_bytes())["token"] == "t1"
    assert store.files.progress.stat().st_mode & 0o777 == 0o600


def test_a_corrupt_companion_falls_back_to_the_state_file_with_a_warning(tmp_path: Path):
    path = tmp_path / "s.token"
    store = _store(path)
    digest = hashlib.sha256(b"a\n").hexdigest()
    store.commit_point(Point("t1", 1, digest))
    store.note(Point("t1", 2, hashlib.sha256(b"a\nb\n").hexdigest()))
    store.close()
    store.files.progress.write_bytes(b'{"seq": 99, "token": "t1", "events": 5000}\n')
    store = _store(path)
    store.load()
    point, warnings = store.resume_point()
    assert point == Point("t1", 1, digest)
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "checksum" in warnings[0]
    store.close()


def test_a_corrupt_progress_in_the_state_file_keeps_its_token(tmp_path: Path):
    path = tmp_path / "s.token"
    store = _store(path)
    store.commit_point(Point("t1", 0))
    store.close()
    doc = json.loads(path.read_text())
    doc["progress"] = {"seq": 3, "events": "many"}
    path.write_text(json.dumps(doc))
    store = _store(path)
    assert store.load()[0] == "t1"
    point, warnings = store.resume_point()
    assert point == Point("t1") and "unusable" in warnings[0]
    store.close()


def test_a_companion_of_another_filter_is_ignored(tmp_path: Path):
    path = tmp_path / "s.token"
    store = _store(path, filter="A")
    store.commit_point(Point("t1", 0))
    store.note(Point("t1", 1, hashlib.sha256(b"a\n").hexdigest()))
    store.close()
    doc = json.loads(path.read_text())
    doc["filter"] = "B"
    path.write_text(json.dumps(doc))
    store = _store(path, filter="B")
    assert store.load()[0] == "t1"
    assert store.resume_point() == (Point("t1"), [])
    store.close()
