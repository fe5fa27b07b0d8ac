"""Chaos: kill -9 the emitter 50 times at random moments under an acknowledging improg-like consumer.

After every crash the next run must start at or before the first line not yet acknowledged (no
acknowledged event lost, none skipped), and it may re-send at most ``max_unacked`` + one page of
lines that were already acknowledged. The state file must survive every kill.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable, List

import pytest

from ack_helpers import ImprogConsumer, TokenMap, run_argv, state_token
from determinism import SEED, rounds
from emulator_helpers import ClientCert
from kata_events.emulator import Emulator

KILLS = rounds(50)
PAGE = 200
WINDOW = 300


def test_fifty_kill9_lose_nothing_acknowledged_and_resend_at_most_a_window_and_a_page(
    make_emulator: Callable[..., Emulator],
    client_cert: ClientCert,
    ext_id: str,
    tmp_path: Path,
    rng: random.Random,
    capsys: pytest.CaptureFixture,
) -> None:
    seed = SEED
    emulator = make_emulator(backlog=400_000, event_bytes=200)
    tokens = TokenMap(emulator)
    state = tmp_path / "state.json"
    argv = run_argv(emulator, client_cert, ext_id, state, "--max-unacked", str(WINDOW), max_events=PAGE)
    acked_through = 0  # the highest EmulatorSeq acknowledged so far, over all runs
    resent: List[int] = []
    mid_stream = 0
    started = time.monotonic()
    for crash in range(KILLS):
        consumer = ImprogConsumer(argv, tmp_path / "stderr.log").start()
        try:
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.0, 0.6))  # anywhere, start-up included
            else:
                consumer.wait_lines(1, 20)
                time.sleep(rng.uniform(0.0, 0.25))
        finally:
            consumer.kill()
        seqs = consumer.seqs
        context = f"crash {crash} (seed {seed})"
        if seqs:
            mid_stream += 1
            first = seqs[0]
            assert seqs == list(range(first, first + len(seqs))), f"{context}: a gap inside one run"
            assert first <= acked_through + 1, (
                f"{context}: restarted at {first}, but only {acked_through} were acknowledged: "
                f"events {acked_through + 1}..{first - 1} lost"
            )
            again = max(0, acked_through - first + 1)
            resent.append(again)
            assert again <= WINDOW + PAGE, f"{context}: {again} acknowledged lines sent again"
            if consumer.acked:
                acked_through = max(acked_through, seqs[consumer.acked - 1])
        # The state file is intact after every kill, and never ahead of the acknowledgements.
        token = state_token(state)
        if token is not None:
            assert tokens.position(token) - 1 <= acked_through, context
    took = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\n  chaos: {KILLS} kill -9 in {took:.1f} s, {mid_stream} while lines flowed, "
            f"{acked_through} events acknowledged, re-sent per crash max {max(resent, default=0)} "
            f"mean {sum(resent) / max(1, len(resent)):.0f} (bound {WINDOW + PAGE})"
        )
    assert mid_stream >= KILLS // 2, "most kills should land while events are flowing"
    assert acked_through > KILLS // 5 * PAGE
