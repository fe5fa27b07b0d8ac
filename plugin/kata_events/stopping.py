"""The one stop state of a run: whether to stop, why, and since when.

A signal handler, the shipper's ``STOP``, a broken pipe or a failure on a background thread *asks*
for a stop; the loop itself *ends* (``--once`` caught up, the demo's event count). Every wait (the
request and body hand-overs, the writer waiting for room, the retry sleep) looks here at least every
`STOP_POLL`, so a signal handler wakes nobody and nothing is raised into a blocked call: `ask` is
plain assignments, safe even while the interrupted frame holds a lock. A thread asking
(`ask_and_wake`) also wakes the waits under way at once: rsyslog gives its child 200 ms after
``STOP``. This module never logs.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager, suppress
from typing import Any, Iterator, Optional, Set

#: The longest a wait goes without looking at the stop state: a stop is seen within this.
STOP_POLL = 0.05
#: What `Stop.ask_and_wake` puts in a hand-over box to end its wait.
WAKE = object()


class Stop:
    """``asked``: a stop was requested from outside the loop; ``stopping``: the loop is to end."""

    def __init__(self) -> None:
        self.asked = False
        self.ending = False
        #: Why the run stops: the first reason given wins.
        self.reason = ""
        #: When a stop was first asked for (monotonic), else None: a stop goes back from there,
        #: however long the loop then takes to unwind on a loaded host.
        self.at: Optional[float] = None
        # The hand-over boxes waited on now, and the sleep's event: woken by threads, never by a
        # signal handler (a handler could land while the interrupted frame holds their locks).
        self._boxes: Set[Any] = set()
        self._boxes_lock = threading.Lock()
        self._woken = threading.Event()

    @property
    def stopping(self) -> bool:
        return self.asked or self.ending

    def ask(self, reason: str) -> None:
        """Request a stop (a signal, STOP, a failure). Plain assignments: safe from a signal handler."""
        if self.at is None:
            self.at = time.monotonic()
        self.reason = self.reason or reason
        self.asked = True

    def ask_and_wake(self, reason: str) -> None:
        """`ask`, from a thread (never a signal handler): the waits under way end at once."""
        self.ask(reason)
        self._woken.set()
        with self._boxes_lock:
            for box in self._boxes:
                # A full box holds an item already: its wait ends anyway.
                with suppress(queue.Full):
                    box.put_nowait(WAKE)

    @contextmanager
    def waiting_on(self, box: Any) -> Iterator[None]:
        """While inside, `ask_and_wake` wakes a wait on ``box`` (a `queue.Queue`)."""
        with self._boxes_lock:
            self._boxes.add(box)
        try:
            yield
        finally:
            with self._boxes_lock:
                self._boxes.discard(box)

    def end(self, reason: str = "") -> None:
        """The loop ends on its own (caught up, enough events shown): nothing younger is asked for."""
        self.reason = self.reason or reason
        self.ending = True

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the run is stopping; True when it is."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._woken.wait(min(left, STOP_POLL))
        return True
