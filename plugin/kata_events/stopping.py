"""The one stop state of a run: whether to stop, why, and since when.

A signal handler, the acknowledgement reader (``STOP``), a broken pipe or a failure on a background
thread *asks* for a stop; the loop itself *ends* (``--once`` caught up, the demo's event count).
Everyone who waits (the request and body hand-overs, the writer waiting for room, the retry
sleep) waits in slices of at most `STOP_POLL` and looks here between them, so nothing has to be
woken and nothing is raised into a blocked call. `ask` is plain assignments: safe from a signal
handler landing anywhere, even while the interrupted frame holds a lock. This module never logs.
"""

from __future__ import annotations

import time
from typing import Optional

#: The longest a wait goes without looking at the stop state: a stop is seen within this.
STOP_POLL = 0.05


class Stop:
    """``asked``: a stop was requested from outside the loop; ``stopping``: the loop is to end."""

    def __init__(self) -> None:
        self.asked = False
        self.ending = False
        #: Why the run stops ("" until it does): the first reason given wins.
        self.reason = ""
        #: When a stop was first asked for (monotonic), else None: a stop goes back from there,
        #: however long the loop then takes to unwind on a loaded host.
        self.at: Optional[float] = None

    @property
    def stopping(self) -> bool:
        return self.asked or self.ending

    def ask(self, reason: str) -> None:
        """Request a stop (a signal, STOP, a failure). Plain assignments: safe from a signal handler."""
        if self.at is None:
            self.at = time.monotonic()
        if not self.reason:
            self.reason = reason
        self.asked = True

    def end(self, reason: str = "") -> None:
        """The loop ends on its own (caught up, enough events shown): nothing younger is asked for."""
        if reason and not self.reason:
            self.reason = reason
        self.ending = True

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the run is stopping; True when it is."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, STOP_POLL))
        return True
