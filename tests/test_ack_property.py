"""Property: whatever the pages and however the shipper acknowledges, no token runs ahead, nothing hangs.

Hypothesis draws page sizes (empty pages included), the window, and a consumer script of ``ACK``
and ``ACK <n>`` bursts, delays, junk, and an ending (STOP, EOF, or STOP followed by more ACKs that
must be ignored). `AckDelivery` is driven in-process over two real ``os.pipe()`` pairs by a small
loop that does what the runner does (wait for room, write the page, end it); a second property
runs the real ``kata-events run`` under the same kind of script, with fewer examples.
"""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ack_helpers import ImprogConsumer, StatePoller, TokenMap, run_argv, state_token
from emulator_helpers import ClientCert
from kata_events.delivery.acks import AckDelivery
from kata_events.delivery.writer import LineWriter
from kata_events.emulator import Emulator


@pytest.fixture(scope="module")
def shared_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulator for every example of the real-process property (each example subscribes anew)."""
    emulator = Emulator(
        listen="127.0.0.1:0",
        state_dir=tmp_path_factory.mktemp("emulator"),
        approve="auto",
        backlog=1500,
        rate=0,
        event_bytes=300,
        default_max_timeout=1.0,
    ).start()
    yield emulator
    emulator.stop()


#: The whole exchange must end this soon after the consumer's STOP or EOF.
STOP_BOUND = 3.0

actions = st.lists(
    st.one_of(
        st.tuples(st.just("ack"), st.integers(1, 40)),
        st.tuples(st.just("ackn"), st.integers(1, 60)),
        st.tuples(st.just("delay"), st.integers(0, 30)),
        st.tuples(st.just("junk"), st.sampled_from([b"HELLO\n", b"ACK 0\n", b"START\n", b"ACK -2\n"])),
    ),
    max_size=25,
)
endings = st.sampled_from(["stop", "eof", "stop then ack"])


class ScriptedConsumer:
    """Reads stdout lines continuously; acknowledges only when the script says, never more than read."""

    def __init__(self, stdout_r: int, stdin_w: int) -> None:
        self.stdout_r = stdout_r
        self.stdin_w = stdin_w
        self.received = 0
        self.acked = 0
        self.acked_before_stop: Optional[int] = None
        self._partial = b""
        self._cond = threading.Condition()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._done.is_set():
            if not select.select([self.stdout_r], [], [], 0.01)[0]:
                continue
            chunk = os.read(self.stdout_r, 65536)
            if not chunk:
                return
            with self._cond:
                self.received += chunk.count(b"\n")
                self._cond.notify_all()

    def _available(self, n: int) -> int:
        deadline = time.monotonic() + 0.1
        with self._cond:
            while self.received - self.acked < n and time.monotonic() < deadline:
                self._cond.wait(0.01)
            return min(n, self.received - self.acked)

    def play(self, script: List[Tuple], ending: str) -> float:
        """Run the script; returns the monotonic time of the ending (STOP or EOF)."""
        for kind, arg in script:
            if kind in ("ack", "ackn"):
                n = self._available(arg)
                if n:
                    self.acked += n  # counted before writing: the emitter cannot have seen more
                    os.write(self.stdin_w, b"ACK\n" * n if kind == "ack" else b"ACK %d\n" % n)
            elif kind == "delay":
                time.sleep(arg / 1000)
            else:
                os.write(self.stdin_w, arg)
        self.acked_before_stop = self.acked
        ended = time.monotonic()
        if ending == "eof":
            # A last ACK without its newline still counts at end of input.
            if self.received > self.acked:
                self.acked += 1
                self.acked_before_stop += 1
                os.write(self.stdin_w, b"ACK")
            os.close(self.stdin_w)
            self.stdin_w = -1
        else:
            os.write(self.stdin_w, b"\nSTOP\n")
            if ending == "stop then ack":
                n = self.received - self.acked
                self.acked += n
                os.write(self.stdin_w, b"ACK\n" * min(n, 1000) + b"ACK 1000\n")
        return ended

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)


@given(
    pages=st.lists(st.integers(0, 30), min_size=1, max_size=15),
    window=st.integers(1, 50),
    batch=st.integers(1, 12),
    script=actions,
    ending=endings,
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_in_process_no_token_ahead_of_acks_and_no_deadlock(
    pages: List[int], window: int, batch: int, script: List[Tuple], ending: str
) -> None:
    stdout_r, stdout_w = os.pipe()
    stdin_r, stdin_w = os.pipe()
    cumulative = [sum(pages[: i + 1]) for i in range(len(pages))]
    consumer = ScriptedConsumer(stdout_r, stdin_w)
    stopped = threading.Event()
    commits: List[Tuple[int, int]] = []  # (page index, acknowledgements written by then)

    def commit(point) -> None:
        commits.append((int(point.token[1:]), consumer.acked))

    delivery = AckDelivery(
        LineWriter(stdout_w),
        commit,
        on_stop=lambda reason: stopped.set(),
        max_unacked=window,
        ack_timeout=60,
        stdin_fd=stdin_r,
        started=True,
    )
    ended_pages: List[int] = []
    room_violations: List[int] = []

    def runner() -> None:
        for i, size in enumerate(pages):
            delivery.wait_for_room()
            if stopped.is_set():
                break
            if delivery.ledger.unacked >= window:
                room_violations.append(delivery.ledger.unacked)
            lines = [b'{"n":%d}' % n for n in range(size)]
            for start in range(0, size, batch):
                delivery.write(lines[start : start + batch])
            delivery.end_page(f"t{i}")
            ended_pages.append(i)
        stopped.wait(10)  # the long poll, until the shipper says STOP or EOF
        delivery.finish(0.1)
        delivery.close()

    loop = threading.Thread(target=runner, daemon=True)
    loop.start()
    try:
        ended_at = consumer.play(script, ending)
        loop.join(STOP_BOUND)
        finished_in = time.monotonic() - ended_at
        assert not loop.is_alive(), f"deadlock: the loop did not end within {STOP_BOUND} s of {ending}"
    finally:
        consumer.close()
        for fd in (stdout_r, stdout_w, stdin_r, consumer.stdin_w):
            if fd >= 0:
                os.close(fd)
    assert finished_in < STOP_BOUND
    assert not room_violations, f"wrote past the window of {window}: {room_violations}"
    acked = consumer.acked_before_stop
    assert acked is not None
    order = [page for page, _ in commits]
    assert order == sorted(order) and len(set(order)) == len(order), order
    for page, acked_then in commits:
        assert cumulative[page] <= acked_then, f"page {page} committed with {acked_then} ACKs written"
        assert cumulative[page] <= acked, f"page {page} committed on ACKs sent after {ending}"
    # And nothing acknowledged is held back: the newest ended page wholly acknowledged is committed.
    due = [i for i in ended_pages if cumulative[i] <= acked]
    assert (order[-1] if order else None) == (max(due) if due else None)


@given(
    script=st.lists(
        st.one_of(
            st.tuples(st.just("ack"), st.integers(1, 150)),
            st.tuples(st.just("ackn"), st.integers(1, 300)),
            st.tuples(st.just("delay"), st.integers(0, 200)),
        ),
        min_size=1,
        max_size=8,
    ),
    ending=endings,
    page=st.sampled_from([7, 50, 120]),
    window=st.sampled_from([1, 60, 400]),
)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_real_process_no_token_ahead_of_acks_and_no_deadlock(
    script: List[Tuple],
    ending: str,
    page: int,
    window: int,
    shared_emulator: Emulator,
    client_cert: ClientCert,
    ext_id: str,
    tmp_path: Path,
) -> None:
    emulator = shared_emulator
    run_dir = tmp_path / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    state = run_dir / "state.json"
    tokens = TokenMap(emulator)
    argv = run_argv(emulator, client_cert, f"{ext_id}", state, "--max-unacked", str(window), max_events=page)
    consumer = ImprogConsumer(argv, run_dir / "stderr.log", ack="none").start()
    poller = StatePoller(state, consumer, tokens).start()
    try:
        assert consumer.wait_lines(1, 30)
        for kind, arg in script:
            if kind == "delay":
                time.sleep(arg / 1000)
                continue
            consumer.wait_lines(consumer.acked + arg, 0.3)
            n = min(arg, len(consumer.lines) - consumer.acked)
            consumer.ack(n, batch=kind == "ackn")
        acked = consumer.acked
        time.sleep(0.2)
        ended = time.monotonic()
        if ending == "eof":
            consumer.close_stdin()
        else:
            consumer.send(b"STOP\n")
            if ending == "stop then ack":
                consumer.send(b"ACK 100000\n")
        assert consumer.proc is not None
        consumer.proc.wait(timeout=STOP_BOUND + 2)
        took = time.monotonic() - ended
    finally:
        poller.stop()
        consumer.kill()
    assert took < STOP_BOUND, f"{took:.2f} s from {ending} to exit"
    assert consumer.proc.returncode == 0
    ahead = [(tokens.position(t) - 1, a) for t, a in poller.seen if tokens.position(t) - 1 > a]
    assert not ahead, ahead
    final = state_token(state)
    covered = tokens.position(final) - 1 if final else 0
    assert covered <= acked
    # At most the page being finished when STOP came is left uncommitted.
    assert covered >= (acked // page) * page - page
