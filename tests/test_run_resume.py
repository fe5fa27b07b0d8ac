"""Acceptance: a restart re-sends a moment of work, not pages.

Pages of 72,000 events, kill -9 at random points (inside the first page of a new subscription,
inside a later page, right after a page, right after a commit), then a drain: nothing is lost
(checked by EmulatorSeq), and each restart sends again at most 3,000 events that were already
delivered (`kata_events.delivery.policies.RESEND_BOUND`: writing waits while 2,000 lines are not recorded,
plus one piece of at most 1,000 lines), whatever the threads' timing, in every mode: ``--ack
none`` on a pipe (with the default settle time: the record follows the drained position while the
process runs), ``--ack none`` on a regular file (delivered = fsynced), and ``--ack lines``
(delivered = acknowledged).

The seed is printed; ``KATA_TEST_SEED`` changes it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from ack_helpers import ImprogConsumer, run_argv
from determinism import SEED
from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from run_helpers import RESEND_BOUND, after_torn_tail, partial_tail, run_args, seq_of, split_lines

PAGE = 72_000
KILLS = 7
EVENT_BYTES = 200
BACKLOG = 2 * PAGE  # and `_keep_backlog` tops it up before each run


def _kill_moment(rng: random.Random, run, n: int) -> str:
    """Wait for a random moment of one of three kinds; returns which."""
    kind = ("inside a page", "after a page", "after a commit")[n % 3]
    if kind == "inside a page":
        time.sleep(rng.uniform(0.0, 1.5))
    elif kind == "after a page":
        pages = len(run.events("page"))
        run.wait_event("page", timeout=30, where=lambda r: len(run.events("page")) > pages)
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        commits = len(run.events("commit"))
        run.wait_event("commit", timeout=30, where=lambda r: len(run.events("commit")) > commits)
    return kind


class History:
    """Events delivered over all runs; re-sends per restart."""

    def __init__(self) -> None:
        self.last = 0  # the highest EmulatorSeq delivered so far
        self.seen: set = set()
        self.resent: List[int] = []

    def add(self, seqs: List[int], label: str, check_resend: bool = True) -> None:
        if not seqs:
            return
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{label}: a gap inside one run"
        assert seqs[0] <= self.last + 1, f"{label}: starts at {seqs[0]} after {self.last}: events lost"
        again = max(0, self.last - seqs[0] + 1)
        if check_resend:
            self.resent.append(again)
            assert again <= RESEND_BOUND, f"{label}: {again} delivered events sent again"
        self.last = max(self.last, seqs[-1])
        self.seen.update(seqs)

    def complete(self) -> None:
        assert self.seen == set(range(1, self.last + 1)), "some events never arrived"

    def summary(self) -> str:
        r = self.resent or [0]
        return f"re-sent per restart max {max(r)} mean {sum(r) / len(r):.0f} over {len(self.resent)}"


def _keep_backlog(emu: Emulator, delivered: int) -> None:
    """At least two pages waiting past ``delivered``: on a fast machine a few runs can drain the
    backlog, and the next one would then wait for a line that never comes."""
    waiting = emu.next_seq - 1 - delivered
    if waiting < 2 * PAGE:
        emu.add_events(2 * PAGE - waiting)


def _setup(make_emulator) -> Emulator:
    """The emulator with its backlog and no subscription yet: the first kill lands inside the first
    page of a new subscription, which has no token before it."""
    return make_emulator(backlog=BACKLOG, event_bytes=EVENT_BYTES)


@pytest.mark.timeout(150)
def test_kill9_on_a_pipe_resends_at_most_3000_of_a_72000_event_page(
    make_emulator, client_cert, ext_id, runs, tmp_path, rng, capsys
):
    seed = SEED
    emu = _setup(make_emulator)
    state = tmp_path / "state.json"
    args = run_args(
        emu,
        ext_id,
        client_cert,
        state,
        "--max-events",
        str(PAGE),
        "--max-timeout",
        "1",
        "--log-level",
        "debug",
        settle_time=None,
    )
    history = History()
    kinds = []
    for n in range(KILLS):
        _keep_backlog(emu, history.last)
        run = runs.start(args)
        run.wait_lines(1, timeout=30)
        kinds.append(_kill_moment(rng, run, n))
        run.kill9()
        data = run.output
        lines = split_lines(data, allow_partial_tail=True)
        tail = partial_tail(data)
        seqs = [seq_of(line) for line in lines]
        label = f"run {n}, killed {kinds[-1]} (seed {seed})"
        if tail and seqs:
            assert emu.event_bytes(seqs[-1] + 1).startswith(tail), label
        history.add(seqs, label)
    final = runs.complete(args + ["--once", "--settle-time", "0"], timeout=120)
    assert final.returncode == 0, final.stderr_text[-3000:]
    history.add(final.seqs(), "final --once run")
    history.complete()
    assert history.last > 3 * PAGE, f"too few events went through: {history.last}"
    with capsys.disabled():
        print(f"\n  pipe, kill -9 x{KILLS}: {history.summary()}; {history.last} events; seed {seed}")


@pytest.mark.timeout(150)
def test_kill9_on_a_regular_file_resends_at_most_3000_of_a_72000_event_page(
    make_emulator, client_cert, ext_id, runs, tmp_path, rng, capsys
):
    seed = SEED
    emu = _setup(make_emulator)
    state = tmp_path / "state.json"
    out_file = tmp_path / "events.ndjson"
    args = run_args(
        emu,
        ext_id,
        client_cert,
        state,
        "--max-events",
        str(PAGE),
        "--max-timeout",
        "1",
        "--log-level",
        "debug",
    )
    history = History()
    torn = False  # whether the last run's kill left the file ending mid-line
    for n in range(KILLS):
        _keep_backlog(emu, history.last)
        before = out_file.stat().st_size if out_file.exists() else 0
        run = runs.start(args, stdout_file=out_file)
        run.wait_event("page", timeout=30, where=lambda r: r.get("events", 0) > 0) if n % 3 == 1 else None
        kind = _kill_moment(rng, run, n) if n % 3 != 1 else "after a page"
        run.kill9()
        label = f"run {n}, killed {kind} (seed {seed})"
        with open(out_file, "rb") as fh:
            fh.seek(before)
            data = after_torn_tail(fh.read(), torn, label)
        lines = split_lines(data, allow_partial_tail=True)
        torn = bool(partial_tail(data))
        history.add([seq_of(line) for line in lines], label)
    before = out_file.stat().st_size
    final = runs.complete(args + ["--once"], stdout_file=out_file, timeout=120)
    assert final.returncode == 0, final.stderr_text[-3000:]
    with open(out_file, "rb") as fh:
        fh.seek(before)
        data = after_torn_tail(fh.read(), torn, "final --once run")
    history.add([seq_of(line) for line in split_lines(data)], "final --once run")
    history.complete()
    assert history.last > 3 * PAGE, f"too few events went through: {history.last}"
    with capsys.disabled():
        print(f"\n  file, kill -9 x{KILLS}: {history.summary()}; {history.last} events; seed {seed}")


@pytest.mark.timeout(150)
def test_kill9_with_acknowledgements_resends_at_most_3000_acknowledged_events(
    make_emulator: Callable[..., Emulator],
    client_cert: ClientCert,
    ext_id: str,
    tmp_path: Path,
    rng: random.Random,
    capsys,
) -> None:
    seed = SEED
    emu = _setup(make_emulator)
    state = tmp_path / "state.json"
    argv = run_argv(emu, client_cert, ext_id, state, max_events=PAGE)
    acked_through = 0
    resent: List[int] = []
    seen: set = set()
    for n in range(KILLS + 1):
        _keep_backlog(emu, max(seen, default=0))
        consumer = ImprogConsumer(argv, tmp_path / "stderr.log").start()
        try:
            last_run = n == KILLS
            if last_run:
                # The drain: read until quiet, then stop as improg does.
                assert consumer.wait_lines(1, 30)
                while not consumer.quiet_for(1.5):
                    pass
                consumer.stop()
            else:
                assert consumer.wait_lines(1, 30), f"run {n}: no line"
                time.sleep(rng.uniform(0.0, 1.5) if n % 2 else rng.uniform(0.0, 0.3))
                consumer.kill()
        finally:
            consumer.kill()
        seqs = consumer.seqs
        label = f"run {n} (seed {seed})"
        if not seqs:
            continue
        first = seqs[0]
        assert seqs == list(range(first, first + len(seqs))), f"{label}: a gap inside one run"
        assert first <= acked_through + 1, f"{label}: restarted at {first} after {acked_through} acknowledged"
        again = max(0, acked_through - first + 1)
        resent.append(again)
        assert again <= RESEND_BOUND, f"{label}: {again} acknowledged events sent again"
        if consumer.acked:
            acked_through = max(acked_through, seqs[consumer.acked - 1])
        seen.update(seqs[: consumer.acked])
    assert seen == set(range(1, acked_through + 1)), "an acknowledged event is missing"
    assert acked_through >= emu.next_seq - 1, "the drain did not reach the end"
    with capsys.disabled():
        print(
            f"\n  acks, kill -9 x{KILLS}: re-sent per restart max {max(resent)} mean "
            f"{sum(resent) / len(resent):.0f}; {acked_through} events; seed {seed}"
        )


def _deliver_part_of_a_page(runs, emu, args, out_file: Path, lines_wanted: int) -> Tuple[List[int], str]:
    """One run into a regular file, killed once at least ``lines_wanted`` lines are fsynced; the
    delivered seqs and the state file's token."""
    run = runs.start(args, stdout_file=out_file)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if out_file.exists() and out_file.stat().st_size > lines_wanted * (EVENT_BYTES + 200):
            break
        time.sleep(0.02)
    time.sleep(0.3)  # let the fsync and its record follow
    run.kill9()
    lines = split_lines(out_file.read_bytes(), allow_partial_tail=True)
    return [seq_of(line) for line in lines], run


def _killed_inside_a_big_page(make_emulator, client_cert, ext_id, runs, tmp_path: Path):
    """A first page of 10 events makes a token; a second run is killed inside the next page (a big
    one) once 20,000 of its lines are in a file. Returns the emulator, the state file, the arguments
    of a run, and the seqs the killed run delivered."""
    emu = make_emulator(backlog=10, event_bytes=EVENT_BYTES)
    state = tmp_path / "state.json"
    args = run_args(emu, ext_id, client_cert, state, "--max-events", str(PAGE), "--max-timeout", "1")
    first_args = run_args(emu, ext_id, client_cert, state, "--once")
    assert runs.complete(first_args, stdout_file=tmp_path / "ten.ndjson").returncode == 0
    emu.add_events(200_000)
    seqs, _ = _deliver_part_of_a_page(runs, emu, args, tmp_path / "first.ndjson", 20_000)
    return emu, state, args, seqs


@pytest.mark.timeout(90)
def test_a_reused_token_answered_with_other_events_skips_nothing_and_says_why(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu, state, args, seqs = _killed_inside_a_big_page(make_emulator, client_cert, ext_id, runs, tmp_path)
    assert 5_000 < len(seqs) < PAGE, "the kill was meant to land inside the first big page"
    progress = state.with_name(state.name + ".progress")
    assert progress.exists(), "no progress record inside the page"
    emu.inject("other_events:shift=100")
    second = runs.complete(args + ["--once"], timeout=60)
    assert second.returncode == 0, second.stderr_text[-3000:]
    warning = second.wait_event("resume_mismatch")
    assert warning["level"] == "warning" and warning["events"] > 0
    assert not second.events("resume")
    got = second.seqs()
    # Nothing skipped: the whole answer to the token (from event 11 on) is delivered again.
    assert got[0] == 11 and got == list(range(11, emu.next_seq)), (got[:3], got[-3:])


@pytest.mark.timeout(90)
def test_a_restart_skips_exactly_the_events_recorded_as_delivered(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu, state, args, seqs = _killed_inside_a_big_page(make_emulator, client_cert, ext_id, runs, tmp_path)
    second = runs.complete(args + ["--once"], timeout=60)
    assert second.returncode == 0, second.stderr_text[-3000:]
    _assert_resumed_right_after_the_skip(second, emu, seqs, answer_starts_at=11)


def _assert_resumed_right_after_the_skip(second, emu, seqs: List[int], answer_starts_at: int) -> None:
    """``second`` skipped what its record said (`resume`), sent at most the bound again, lost none."""
    skipped = second.wait_event("resume")["events"]
    got = second.seqs()
    assert skipped > 0
    assert got[0] == answer_starts_at + skipped, "the restart did not start right after the events it skipped"
    assert got[0] <= seqs[-1] + 1, "skipped an event that was never delivered"
    assert seqs[-1] - got[0] + 1 <= RESEND_BOUND
    assert got == list(range(got[0], emu.next_seq)), "events lost"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["companion", "state file"])
def test_a_corrupt_progress_record_resends_from_the_commit_with_a_warning(
    make_emulator, client_cert, ext_id, runs, tmp_path, where
):
    emu, state, args, seqs = _killed_inside_a_big_page(make_emulator, client_cert, ext_id, runs, tmp_path)
    progress = state.with_name(state.name + ".progress")
    if where == "companion":
        data = bytearray(progress.read_bytes())
        at = data.index(b'"events":') + len(b'"events":')
        data[at] = ord("9") if data[at] != ord("9") else ord("8")  # a flipped digit: checksum fails
        progress.write_bytes(bytes(data))
    else:
        progress.unlink()
        doc = json.loads(state.read_text())
        doc["progress"] = {"seq": "x", "events": -1}
        state.write_text(json.dumps(doc))
    second = runs.complete(args + ["--once"], timeout=60)
    assert second.returncode == 0, second.stderr_text[-3000:]
    warning = second.wait_event("progress_record")
    assert warning["level"] == "warning"
    got = second.seqs()
    assert got[0] <= seqs[-1] + 1 and got[-1] == emu.next_seq - 1
    if where == "state file":
        assert got[0] == 11, "with no usable record the whole answer to the token is sent again"


def _killed_inside_the_first_page(make_emulator, client_cert, ext_id, runs, tmp_path: Path):
    """No saved token: the first request makes a new subscription whose answer is a page of 72,000
    events; the run is killed once 20,000 of them are in a file. Returns the emulator, the state
    file, the arguments of a run, and the seqs the killed run delivered."""
    emu = make_emulator(backlog=200_000, event_bytes=EVENT_BYTES)
    state = tmp_path / "state.json"
    args = run_args(emu, ext_id, client_cert, state, "--max-events", str(PAGE), "--max-timeout", "1")
    seqs, _ = _deliver_part_of_a_page(runs, emu, args, tmp_path / "first.ndjson", 20_000)
    assert 5_000 < len(seqs) < PAGE, "the kill was meant to land inside the first page"
    assert not state.exists() or json.loads(state.read_text()).get("token") is None
    return emu, state, args, seqs


@pytest.mark.timeout(90)
def test_a_kill_inside_the_first_page_of_a_new_subscription_resends_at_most_the_bound(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu, state, args, seqs = _killed_inside_the_first_page(make_emulator, client_cert, ext_id, runs, tmp_path)
    second = runs.complete(args + ["--once"], timeout=60)
    assert second.returncode == 0, second.stderr_text[-3000:]
    # Before: no progress was recorded without a token, and all of it came again from event 1.
    _assert_resumed_right_after_the_skip(second, emu, seqs, answer_starts_at=1)


@pytest.mark.timeout(90)
def test_a_new_subscription_answering_with_other_events_skips_nothing_and_says_why(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    emu, state, args, seqs = _killed_inside_the_first_page(make_emulator, client_cert, ext_id, runs, tmp_path)
    emu.inject("other_events:shift=100")
    second = runs.complete(args + ["--once"], timeout=60)
    assert second.returncode == 0, second.stderr_text[-3000:]
    warning = second.wait_event("resume_mismatch")
    assert warning["level"] == "warning" and warning["events"] > 0
    assert "new subscription" in warning["message"]
    assert not second.events("resume")
    got = second.seqs()
    # Nothing skipped: the answer of the new subscription asked for again is delivered whole.
    assert got == list(range(got[0], emu.next_seq)) and got[0] <= 101, got[:3]


@pytest.mark.timeout(120)
def test_a_body_trickling_while_the_restart_skips_is_abandoned_and_the_skip_kept(
    make_emulator, client_cert, ext_id, runs, tmp_path
):
    """The answer to the saved token trickles while the restart checks and skips what was
    delivered: it is abandoned within the usual deadline (``--max-timeout 1``: 1 + 10 + 5 s), and
    the retry still skips those events rather than sending them all again."""
    emu, state, args, seqs = _killed_inside_a_big_page(make_emulator, client_cert, ext_id, runs, tmp_path)
    emu.inject("trickle_body", delay=1)
    second = runs.start(args + ["--once"])
    # From the run's start line, not from the fork: a loaded machine's interpreter start-up is not
    # the deadline under test.
    started = second.wait_event("start", timeout=40)["_at"]
    retry = second.wait_event("retry", timeout=40, where=lambda r: "part of the body" in r.get("message", ""))
    waited = retry["_at"] - started
    print(f"trickle during the resume skip: abandoned after {waited:.1f} s")
    assert waited <= 16 + 6, waited
    assert second.wait(60) == 0, second.stderr_text[-3000:]
    # Before: the point was dropped with the abandoned answer, and all of it came again from 11.
    _assert_resumed_right_after_the_skip(second, emu, seqs, answer_starts_at=11)
    second.assert_no_traceback()
