"""The recorder: the one path by which delivery points reach the state file and its companion.

Every write of the state goes through `Recorder`, serialised by its write lock: a commit (a new
token, the state file replaced atomically), progress inside a page (the companion record), a stop
going back to the settled point, the clear after a lost subscription. The delivery threads only
`offer` the newest point (offers made while a write is on disk are coalesced) and a thread named
``recorder`` writes it, so no fsync ever runs under a lock the writer or the acknowledgement
reader waits on. The durable point lives here only (`recorded`, with the lines it covers). While
the state file fails nothing is retried on each offer: the runner's `retry` tries, with backoff.
Never writes to stdout, never logs a whole token.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional, Tuple

from kata_events import logs
from kata_events.delivery.disk_faults import DiskHealth
from kata_events.state.progress import Point
from kata_events.state.store import StateError, short_token

Note = Callable[[Point, bool], None]


class Recorder:
    """Persists the newest point offered: ``commit(point)`` writes the state file (a new token),
    ``note(point, durable)`` the companion record (None: only tokens are recorded)."""

    def __init__(self, commit: Callable[[Point], None], note: Optional[Note], health: DiskHealth) -> None:
        self._commit = commit
        self._note = note
        self.health = health
        self._writing = threading.Lock()
        #: Guards the fields below; never held during a write.
        self._cond = threading.Condition()
        #: The newest point written to the state (or loaded from it at start), and the event lines
        #: written by this process that it covers.
        self.recorded: Optional[Point] = None
        self.lines = 0
        # The newest point offered and not written yet: (point, durable, its lines, the taken
        # position it was chosen at, for the commit line).
        self._pending: Optional[Tuple[Point, bool, int, Optional[int]]] = None
        self._closing = False
        # Whether the write under way is a commit (the state file), not only a progress note.
        self._committing = False
        # Set once a stop went back to the settled point: nothing younger is recorded after it.
        self._final = False
        self.committed_pages = 0
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def start_from(self, point: Optional[Point]) -> None:
        with self._cond:
            self.recorded = point

    def wait_for_commit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds if a commit is being written or waits to be (a new token
        offered, not yet durable); whether one was."""
        with self._cond:
            pending, recorded = self._pending, self.recorded
            due = self._committing or (
                pending is not None
                and pending[0].token is not None
                and (pending[1] or recorded is None or pending[0].token != recorded.token)
            )
            if due:
                self._cond.wait(timeout)
            return due

    def wait_for_lines(self, lines: int, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the recorded point to cover ``lines`` lines."""
        with self._cond:
            if self.lines < lines:
                self._cond.wait(timeout)

    def offer(self, point: Optional[Point], lines: int, position: int) -> None:
        """Record ``point`` soon, unless it is already; never waits for the disk. ``lines``: the
        event lines written up to it; ``position``: the taken position it was chosen at."""
        with self._cond:
            if point is None or self._final:
                return
            if point != self.recorded or self._pending is not None:
                self._pending = (point, False, lines, position)
            elif lines > self.lines:
                self.lines = lines
            else:
                return
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (self._pending is None or self.health.failing("state file")):
                    self._cond.wait()
                if self._closing:
                    return
            self.flush()

    def flush(self, retry: bool = False) -> None:
        """Write what is pending now, on the calling thread; while the state file fails, only a
        ``retry`` (the runner's, with backoff) tries."""
        with self._writing:
            self._write_locked(retry)

    def _write_locked(self, retry: bool) -> None:
        with self._cond:
            pending, recorded = self._pending, self.recorded
            if pending is None:
                if retry:
                    self.health.recovered("state file")
                return
            if self.health.failing("state file") and not retry:
                return
            point, durable, lines, position = pending
            # A point inside the first page of a new subscription has no token: only noted.
            new_token = point.token is not None and (recorded is None or point.token != recorded.token)
            commit = self._committing = new_token or (durable and point.token is not None)
            self._pending = None
        try:
            if self._note is not None and (durable or not commit):
                self._note(point, durable)
            if commit:
                self._commit(point)
        except StateError as exc:
            with self._cond:
                self._committing = False
                self._cond.notify_all()
                if self._pending is None:  # nothing newer came meanwhile: this one stays to do
                    self._pending = pending
            self.health.trouble("state file", str(exc))
            return
        self.health.recovered("state file")
        with self._cond:
            self.recorded = point
            self.lines = max(self.lines, lines)
            self._committing = False
            self._cond.notify_all()
        if commit:
            self.committed_pages += new_token
            logs.emit(
                "commit",
                "continuation token saved: everything before it is delivered"
                + (f", and {point.events} events after it" if point.events else ""),
                pages=self.committed_pages,
                position=position,
                events=point.events,
                token=short_token(point.token),
            )

    @contextlib.contextmanager
    def final(self) -> Iterator[None]:
        """A stop going back: no write is under way inside, nothing pending, nothing younger after."""
        with self._writing:
            with self._cond:
                self._final = True
                self._pending = None
            yield

    def write_final(self, point: Point) -> None:
        """Inside `final`: write ``point`` durably (the companion first, then the state file)."""
        with self._cond:
            self._pending = (point, True, 0, None)
        self._write_locked(retry=True)

    def clear(self, forget: Callable[[], None]) -> None:
        """The subscription is lost: ``forget`` its token, and its pending points (StateError when
        the state file cannot be written)."""
        with self._writing:
            with self._cond:
                self._pending = None
            forget()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
