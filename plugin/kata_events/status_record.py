"""The status record: a small JSON file next to the state file that ``run`` keeps current.

``kata-events status`` reads it (with the state file) to tell a monitoring system how the run is
doing without touching the network or the lock. `Health` holds what the record says and writes it
atomically (a temp file renamed over the old one, so a reader never sees half a record) soon after
each commit, at least every `REFRESH` seconds, and at the stop. A commit only marks the record
changed: the file is written by a thread of its own, never on the commit path, where the delivery
lock is held and file I/O on a loaded disk would hold up the acknowledgements. It is not fsynced:
after a power cut it may be older than the state file, which is the one that matters.

The record's keys are those of `Health.record`; times are epoch seconds. ``behind`` is whether the
last answer was full (the server has more); ``newest_event`` the time stamp of the newest event
delivered. ``state`` is starting, streaming (answers arrive), refused (401, waiting for approval),
failing (requests fail and are retried) or stopped (the process ended, cleanly or with an error:
see ``reason``). This module never logs: a record that cannot be written is retried at the next
update (the run goes on; ``status`` then says the record is old).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from kata_events.private_file import write_private_file

RECORD_VERSION = 1
#: The record is rewritten at least this often while the run lives (seconds).
REFRESH = 5.0
#: ...and at most this often after commits (a commit a page, pages of a few events, is many a second).
MIN_INTERVAL = 0.25


class Health:
    """What the run reports about itself; thread-safe (commits come from the delivery's threads)."""

    def __init__(self, path: Path, max_timeout: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        #: Guards `record`; never held during file I/O.
        self._lock = threading.Lock()
        #: Serializes writers, so that the last write holds the newest record.
        self._write_lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        now = clock()
        self.record: Dict[str, Any] = {
            "version": RECORD_VERSION,
            "pid": os.getpid(),
            "state": "starting",
            "reason": "",
            "started_at": now,
            "updated_at": now,
            "last_commit": None,
            "behind": False,
            "newest_event": None,
            "subscription_lost_at": None,
            "max_timeout": max_timeout,
            "events": 0,
            "stopped_at": None,
        }

    def committed(self) -> None:
        """A token was saved (called by the token store after each commit)."""
        self.update(False, last_commit=self.clock())

    def page(self, events: int, full: bool, newest_event: Optional[float]) -> None:
        """A page was delivered: the server answers; ``full`` says whether it has more."""
        with self._lock:
            total = self.record["events"] + events
        newest = {} if newest_event is None else {"newest_event": newest_event}
        self.update(False, state="streaming", reason="", behind=full, events=total, **newest)

    def stopped(self, reason: str) -> None:
        """The last record, written now. The thread is told to end but not waited for (a stop must
        be quick: rsyslog kills its child 200 ms after STOP): a write of its that comes after this
        one reads the same, newest record, since every write takes the record as it is then."""
        self._stop.set()
        self._dirty.set()
        self.update(state="stopped", reason=reason, stopped_at=self.clock())

    def start(self) -> None:
        """Write the first record; then a thread rewrites it after changes (at most every
        `MIN_INTERVAL`) and every `REFRESH` seconds until `stopped`."""
        self.write()

        def refresh() -> None:
            while not self._stop.is_set():
                self._dirty.wait(REFRESH)
                self._dirty.clear()
                if self._stop.is_set():
                    return
                self.write()
                self._stop.wait(MIN_INTERVAL)

        threading.Thread(target=refresh, name="status", daemon=True).start()

    def update(self, now: bool = True, **fields: Any) -> None:
        """Change the record; ``now``: write it at once (from the caller's thread), else soon."""
        with self._lock:
            self.record.update(fields)
        if now:
            self.write()
        else:
            self._dirty.set()

    def write(self) -> None:
        """Replace the file with the record as it is now; a failure waits for the next write."""
        with self._write_lock:
            with self._lock:
                self.record["updated_at"] = self.clock()
                data = (json.dumps(self.record) + "\n").encode()
            # A failure waits for the next write; status then shows the record's age.
            with contextlib.suppress(OSError):
                write_private_file(self.path, data, sync=False)


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    """The record at ``path``, or None when there is none. Raises ValueError for one that does not
    parse, OSError for one that cannot be read."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
        raise ValueError("not a status record of this version")
    return doc
