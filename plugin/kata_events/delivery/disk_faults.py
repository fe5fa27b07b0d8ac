"""Riding out a failing disk after start: the state file or a regular-file stdout that stops taking data.

A full ``/var`` (ENOSPC), a file system remounted read-only (EROFS), a failing disk (EIO) or a
quota can hit the state file or the ``>> file`` stdout hours after start. Exiting would leave the
stream dead under shippers that never restart their child (rsyslog's improg, Fluent Bit's oneshot
exec), so once running such a fault pauses: the last good token stays in the state file, no new
page is fetched, the cause is logged once and reminded every `REMIND_EVERY` seconds, and the failed
step is retried with backoff until it works. Faults at start still end the process: there the
operator is looking. `DiskHealth` holds that state; never writes to stdout or the state file.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Callable, Optional

from kata_events import logs
from kata_events.backoff import Backoff

#: errno values of a disk that does not take data now but may again (full, read-only, failing, quota).
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM}
)
#: The first retry comes this soon; then twice as late each time, up to `RETRY_CAP`.
RETRY_BASE = 0.5
#: A cleaned disk is noticed within this many seconds at most.
RETRY_CAP = 10.0
#: How often the error is repeated (as a warning) while the disk still fails.
REMIND_EVERY = 60.0


def is_disk_fault(exc: BaseException) -> bool:
    """Whether an OSError is one a disk can recover from (see `DISK_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


class DiskHealth:
    """Whether the state file and stdout take data; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # what ("state file" / "stdout") -> (since, last message)
        self._troubles: dict = {}
        self._reminded = 0.0
        self.backoff = Backoff(RETRY_BASE, RETRY_CAP, rand=lambda: 1.0)

    @property
    def paused(self) -> bool:
        """While the state file or stdout fails: no new page is fetched."""
        return bool(self._troubles)

    def trouble(self, what: str, cause: str) -> None:
        """``what`` failed with ``cause``: log it the first time, remind now and then."""
        now = self._clock()
        with self._lock:
            first = what not in self._troubles
            since = self._troubles.get(what, (now,))[0]
            self._troubles[what] = (since, cause)
            remind = first or now - self._reminded >= REMIND_EVERY
            if remind:
                self._reminded = now
        if not remind:
            return
        message = f"still paused for {now - since:.0f} s: {cause}"
        if first:
            message = (
                f"{cause}. Pausing: no new page is fetched and the state file keeps the last saved "
                f"token; retrying by itself with backoff (up to every {RETRY_CAP:.0f} s) until the "
                "disk takes data again. Free space or fix the file system"
            )
        level = None if first else "WARNING"  # the first at the catalogue's level, reminders lower
        logs.emit("disk_fault", message, level=level, what=what, paused_seconds=round(now - since, 1))

    def recovered(self, what: str) -> None:
        """``what`` works again; the stream carries on when nothing else fails."""
        with self._lock:
            entry = self._troubles.pop(what, None)
            if not self._troubles:
                self.backoff.reset()
        if entry is not None:
            seconds = self._clock() - entry[0]
            logs.emit(
                "disk_recovered",
                f"the {what} takes data again after {seconds:.1f} s: carrying on",
                what=what,
                paused_seconds=round(seconds, 1),
            )

    def failing(self, what: str) -> bool:
        return what in self._troubles

    def next_delay(self) -> float:
        with self._lock:
            return self.backoff.next_delay()

    def wait(self, should_stop: Callable[[], bool]) -> bool:
        """Sleep until the next retry; False if a stop was asked for meanwhile."""
        deadline = self._clock() + self.next_delay()
        while self._clock() < deadline and not should_stop():
            time.sleep(min(0.05, max(0.0, deadline - self._clock())))
        return not should_stop()

    def cause(self) -> Optional[str]:
        with self._lock:
            return next((cause for _since, cause in self._troubles.values()), None)
