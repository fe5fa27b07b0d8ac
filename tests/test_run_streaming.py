"""Acceptance: the first events of a page reach stdout before the page has finished downloading.

A 72,000-event page is ~140 MB: holding it whole before writing would cost memory and delay every
event by the whole download. Here a loopback TCP proxy in the test passes the emulator's answer to
the real process up to a byte count well inside the page's body, then holds the rest back. Lines
must appear on stdout while the proxy holds; once it lets the rest through, the page is complete
and byte-identical.
"""

from __future__ import annotations

import pytest

from proxy_helpers import LoopbackProxy
from run_helpers import assert_exact_events, run_args

EVENTS = 3000
#: Response bytes let through before the proxy holds: the TLS handshake and about half the body
#: (3,000 events of ~2 KB are ~6 MB).
HOLD_AFTER = 3 << 20


@pytest.mark.timeout(90)
def test_first_events_of_a_page_are_on_stdout_before_the_page_is_downloaded(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS, event_bytes=2000)
    proxy = LoopbackProxy(("127.0.0.1", int(emu.url.rsplit(":", 1)[1])), hold_after=HOLD_AFTER)
    try:
        args = run_args(emu, ext_id, make_client_cert("streaming"), tmp_path / "s.json", "--once")
        args[args.index(emu.url)] = proxy.url
        args += ["--max-events", str(EVENTS)]
        run = runs.start(args)
        assert proxy.holding.wait(30), "the proxy never reached the hold point"
        run.wait_lines(100, timeout=15)  # while the rest of the page is held back
        shown = len(run.lines(allow_partial_tail=True))  # the process is still writing
        assert 100 <= shown < EVENTS, shown
        assert run.returncode is None
        proxy.release()
        assert run.wait(60) == 0, run.stderr_text[-3000:]
    finally:
        proxy.close()
    print(f"{shown} of {EVENTS} events on stdout while the page's last {EVENTS - shown} were held back")
    run.assert_no_traceback()
    assert_exact_events(emu, run.lines(), 1, EVENTS)
