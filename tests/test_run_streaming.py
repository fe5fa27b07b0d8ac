"""Acceptance: the first events of a page reach stdout before the page has finished downloading.

A 72,000-event page is ~140 MB: holding it whole before writing would cost memory and delay every
event by the whole download. Here a loopback TCP proxy in the test passes the emulator's answer to
the real process up to a byte count well inside the page's body, then holds the rest back. Lines
must appear on stdout while the proxy holds; once it lets the rest through, the page is complete
and byte-identical.
"""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple

import pytest

from run_helpers import assert_exact_events, run_args

EVENTS = 3000
#: Response bytes let through before the proxy holds: the TLS handshake and about half the body
#: (3,000 events of ~2 KB are ~6 MB).
HOLD_AFTER = 3 << 20


class HoldingProxy:
    """Loopback TCP proxy to ``target`` that, on its first connection, holds the server's bytes
    after ``hold_after`` of them until :meth:`release`."""

    def __init__(self, target: Tuple[str, int], hold_after: int) -> None:
        self.target = target
        self.hold_after = hold_after
        self.passed = 0
        self.holding = threading.Event()
        self._released = threading.Event()
        self._first = True
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._threads: List[threading.Thread] = []
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            held, self._first = self._first, False
            self._spawn(self._pipe, conn, upstream, False)
            self._spawn(self._pipe, upstream, conn, held)

    def _pipe(self, src: socket.socket, dst: socket.socket, hold: bool) -> None:
        src.settimeout(0.5)
        try:
            while not self._closed.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if hold and not self._released.is_set():
                    room = self.hold_after - self.passed
                    if len(data) >= room:
                        dst.sendall(data[:room])
                        self.passed += room
                        self.holding.set()
                        while not self._released.wait(0.2):
                            if self._closed.is_set():
                                return
                        data = data[room:]
                    self.passed += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(3)


@pytest.mark.timeout(90)
def test_first_events_of_a_page_are_on_stdout_before_the_page_is_downloaded(
    make_emulator, make_client_cert, ext_id, runs, tmp_path
):
    emu = make_emulator(backlog=EVENTS, event_bytes=2000)
    proxy = HoldingProxy(("127.0.0.1", int(emu.url.rsplit(":", 1)[1])), HOLD_AFTER)
    try:
        args = run_args(emu, ext_id, make_client_cert("streaming"), tmp_path / "s.json", "--once")
        args[args.index(emu.url)] = proxy.url
        args += ["--max-events", str(EVENTS)]
        run = runs.start(args)
        assert proxy.holding.wait(30), "the proxy never reached the hold point"
        run.wait_lines(100, timeout=15)  # while the rest of the page is held back
        shown = len(run.lines())
        assert 100 <= shown < EVENTS, shown
        assert run.returncode is None
        proxy.release()
        assert run.wait(60) == 0, run.stderr_text[-3000:]
    finally:
        proxy.close()
    print(f"{shown} of {EVENTS} events on stdout while the page's last {EVENTS - shown} were held back")
    run.assert_no_traceback()
    assert_exact_events(emu, run.lines(), 1, EVENTS)
