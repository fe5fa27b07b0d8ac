"""The token store: the continuation token on disk, replaced atomically and locked.

This module owns the state file, its companion progress record and its lock file. It persists only
what it is given, and only the delivery's recorder (`kata_events.delivery.recorder`) gives it
anything: a delivery point whose lines are taken, never a token merely read from the server.

The state file is JSON: ``{"version": 1, "token": "...", "url": "...", "external_system_id": "...",
"filter": "...", "saved_at": "2026-11-27T21:30:00Z", "progress": {"seq": n, "events": k, "digest":
"<sha256 hex>"}}``; ``progress`` (optional when read) says how far into the answer to ``token``
delivery had gone at that commit (see `kata_events.state.progress`).

Progress inside a page moves many times a second, too often for a durable commit each time: it is
written to a companion file ``<state>.progress`` in place, without fsync (a kill -9 keeps the page
cache; a power cut may lose or tear it, and its own checksum tells). Every record, in the state
file or the companion, carries a sequence number; a restart resumes from the newest valid one, so
the companion may run ahead of the state file (even to a newer token: every record is a true claim
when written), and a stop that must go back writes the companion durably first, then the state.

The file is replaced atomically, mode 0600 (`kata_events.private_file`; what a crash leaves, and
why: docs/delivery.md, "Limits"); parsing it is `kata_events.state.reading`'s, the directory's
rules `kata_events.state.files`'. A token is bound to its external system and filter; the URL is
recorded but not binding, since a cluster is reached through several addresses.

Exclusive access: ``flock`` on a separate ``<state>.lock`` file holding the owner's pid. flock (not
fcntl/POSIX locks) because it also conflicts within one process and is released by the kernel when
the process dies; a separate file because the state file itself is replaced on every commit.

This module never logs, never writes to stdout, and never puts a whole token in a message (the first
eight characters at most): it returns reasons and raises errors for the caller to report.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import glob
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from kata_events.options import SERVER_RETENTION_SECONDS
from kata_events.paths import RunFiles
from kata_events.private_file import PathLike, write_private_file
from kata_events.state.errors import StateError, StateForeign, StateLocked, StateNotWritable
from kata_events.state.files import FIX_HINT, StateFiles, directory_permissions, is_link_error, remove, unlock
from kata_events.state.progress import Point, encode_record
from kata_events.state.reading import (
    STATE_VERSION,
    Subscription,
    parse_stamp,
    read_companion,
    read_state,
    stamp,
)


def short_token(token: Optional[str]) -> str:
    """A token's first eight characters, for messages (a whole token is a credential-like secret)."""
    return token[:8] + ("..." if len(token) > 8 else "") if token else "(none)"


class TokenStore:
    """The continuation token of one subscription, persisted in one locked file: ``with
    TokenStore(...) as store:``, then ``store.load()`` and ``store.commit_point(point)``."""

    def __init__(self, path: PathLike, *, url: str, external_system_id: str, filter: str = "") -> None:
        self.path = Path(path)
        #: Its companions: progress inside a page (written often, not fsynced), the lock.
        self.files = RunFiles(self.path)
        self._files = StateFiles(self.path)
        self.url = url
        self.external_system_id = external_system_id
        self.filter = filter
        #: What binds a token (and a progress record) to its subscription.
        self._identity = {"external_system_id": external_system_id, "filter": filter}
        self._lock_fd: Optional[int] = None
        #: The token last loaded from or committed to the file (None before either).
        self.committed: Optional[str] = None
        self._loaded: Optional[Subscription] = None
        self._seq = 0
        self._progress_fd: Optional[int] = None
        self._progress_len = 0
        #: What `open` found worth a warning (a state directory its group can write to).
        self.warnings: List[str] = []
        #: Called after each commit (the status record's "last commit"); never with the lock held.
        self.on_commit: Optional[Callable[[], None]] = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory if missing (0700), take the lock (else StateLocked), and check the
        directory is writable (else StateNotWritable): now, not hours later with events already sent."""
        if self._lock_fd is not None:
            return
        directory = self.path.parent
        self._files.make_directory(directory)
        warning = directory_permissions(directory)
        self.warnings = [warning] if warning else []
        for path in (self.path, self.files.lock, self.files.progress):
            if path.is_symlink():
                raise self._files.link_refused(path)
        if self.path.is_dir():
            raise StateNotWritable(
                f"state file {self.path} is a directory: {FIX_HINT}, e.g. {self.path}/state.token"
            )
        fd = self._files.open(self.files.lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder: Optional[int] = int(os.pread(fd, 32, 0).decode("ascii", "replace").strip())
            except (OSError, ValueError):
                holder = None
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"process {holder}" if holder else "another process"
                raise StateLocked(
                    f"state file {self.path} is in use by {who} (lock {self.files.lock}): "
                    "another kata-events instance runs with the same state file; stop it, or give "
                    "this one its own --state-file",
                    holder_pid=holder,
                ) from None
            raise self._files.not_writable(self.files.lock, exc) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            probe = directory / f".{self.path.name}.{secrets.token_hex(4)}.probe"
            os.close(self._files.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            remove(probe)
            # A process killed between creating its temp file and the rename leaves the temp file
            # behind; holding the lock, we know no one else is writing one now.
            for stale in directory.glob(f".{glob.escape(self.path.name)}.*.tmp"):
                remove(stale)
        except StateError:
            unlock(fd)
            raise
        except OSError as exc:
            unlock(fd)
            raise self._files.not_writable(self.files.lock, exc) from None
        self._lock_fd = fd
        try:
            sub = self.stored()
        except StateError:
            sub = None
        records = [sub.progress if sub is not None else None, read_companion(self.files.progress)[0]]
        self._seq = max([0] + [int(record["seq"]) for record in records if record is not None])

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a starting instance)."""
        progress_fd, self._progress_fd = self._progress_fd, None
        if progress_fd is not None:
            os.close(progress_fd)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            unlock(fd)

    def __enter__(self) -> TokenStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------------

    def stored(self) -> Optional[Subscription]:
        """What the file holds, as is (None if there is no file). Raises StateCorrupt / StateNotWritable."""
        return read_state(self._files)[0]

    def load(self, now: Optional[_dt.datetime] = None) -> Tuple[Optional[str], Optional[str]]:
        """The token to resume from (or None), and why it was not simply taken as is (or None)."""
        sub, kind = read_state(self._files)
        self._loaded = sub if kind == "json" else None
        if sub is None:
            if kind == "empty":
                return None, (
                    f"state file {self.path} is empty (the original script leaves it so when it "
                    "crashes mid-write): starting a new subscription; events since the last run may "
                    "have been skipped"
                )
            return None, None
        if kind == "plain":
            self.committed = sub.token
            return sub.token, (
                f"imported a plain token file {self.path} (the original script's format, token "
                f"{short_token(sub.token)}); it records no filter, so it is assumed to match the "
                "configured one; the file is rewritten as JSON at the next commit"
            )
        self.check_owner(sub)
        if sub.token is None:
            return None, None
        if sub.filter != self.filter:
            return None, (
                f"the filter changed from {sub.filter!r} to {self.filter!r}: starting a new "
                "subscription (events of the old one are not carried over; dropped token "
                f"{short_token(sub.token)})"
            )
        self.committed = sub.token
        notes = []
        if sub.url != self.url:
            notes.append(
                f"the URL changed from {sub.url!r} to {self.url!r}: keeping the token (a Central Node "
                "cluster has several addresses; if this is a different Central Node, the server "
                "will answer 'Subscription not found' and a new subscription starts)"
            )
        saved = parse_stamp(sub.saved_at)
        age = None if saved is None else (now or _dt.datetime.now(_dt.timezone.utc)).timestamp() - saved
        if age is not None and age > SERVER_RETENTION_SECONDS:
            notes.append(
                f"the token was saved {age / 3600:.1f} h ago ({sub.saved_at}); the Central Node keeps "
                "events for at most two hours, so older events may be lost"
            )
        return sub.token, ("; ".join(notes) or None)

    def check_owner(self, sub: Optional[Subscription] = None) -> None:
        """Raise `StateForeign` when the file (``sub`` when already read) records another external
        system id; called before anything is written, so the file stays byte for byte as it was."""
        sub = sub or self.stored()
        if sub is None or sub.external_system_id in ("", self.external_system_id):
            return
        raise StateForeign(
            f"state file {self.path} belongs to external system {sub.external_system_id} "
            f"(token {short_token(sub.token)}, saved {sub.saved_at or 'at an unknown time'}), not to "
            f"{self.external_system_id}: it is left untouched. If another integration uses it, give "
            "this one its own --state-file (KATA_EVENTS_STATE_FILE); if the external system id was "
            f"changed on purpose, run `kata-events state reset --state-file {self.path}` to move the "
            "old state aside and start a new subscription"
        )

    # -- progress inside a page -----------------------------------------------------------------------

    def resume_point(self) -> Tuple[Optional[Point], List[str]]:
        """Where to resume after `load` returned a token: the newest valid record, and warnings (an
        unusable record falls back to the state file's own, fsynced at each commit, or its token)."""
        sub = self._loaded
        if sub is None or sub.token is None or self.committed != sub.token:
            return (Point(self.committed) if self.committed else None), []
        warnings: List[str] = []
        best, best_seq = Point(sub.token), -1
        if sub.progress is not None:
            best = Point(sub.token, sub.progress["events"], sub.progress["digest"])
            best_seq = sub.progress["seq"]
        elif sub.progress_problem:
            warnings.append(
                f"the progress recorded in state file {self.path} is unusable "
                f"({sub.progress_problem}): resuming from its token, events already delivered of "
                "that page are sent again"
            )
        record, corrupt = self._newer_record(
            best_seq, "resuming from the state file's last commit, events delivered since are sent again"
        )
        if record is not None and record["token"] is not None:
            best = Point(record["token"], record["events"], record["digest"])
        return best, warnings + corrupt

    def first_page_point(self) -> Tuple[Optional[Point], List[str]]:
        """After `load` returned no token: how far into the first answer of the last new
        subscription delivery went (a point without a token, or None), and warnings."""
        sub = self._loaded
        stored_seq = sub.progress["seq"] if sub is not None and sub.progress is not None else -1
        record, corrupt = self._newer_record(
            stored_seq,
            "the first answer of the new subscription is delivered whole, events delivered before "
            "are sent again",
        )
        if record is None or record["token"] is not None or not record["events"]:
            return None, corrupt
        return Point(None, record["events"], record["digest"]), []

    def _newer_record(self, seq: int, fallback: str) -> Tuple[Optional[Dict[str, Any]], List[str]]:
        """The companion record when it is newer than ``seq`` and of this subscription, and why it
        is unusable (``fallback``: what resuming does instead)."""
        record, corrupt = read_companion(self.files.progress, fallback)
        if record is None or record["seq"] <= seq:
            return None, corrupt
        same = all(record.get(key) == value for key, value in self._identity.items())
        return (record if same else None), corrupt

    def note(self, point: Point, durable: bool = False) -> None:
        """Record ``point`` in the companion file: in place, fsynced only when ``durable``. Raises
        StateNotWritable."""
        data = encode_record(point, self._next_seq(), self._identity)
        try:
            if self._progress_fd is None:
                self._progress_fd = self._files.open(self.files.progress, os.O_RDWR | os.O_CREAT)
                os.fchmod(self._progress_fd, 0o600)
                self._progress_len = os.fstat(self._progress_fd).st_size
            if len(data) < self._progress_len:
                # JSON ignores trailing blanks: a shorter record leaves no bytes of the longer one.
                data = data[:-1] + b" " * (self._progress_len - len(data)) + b"\n"
            if os.pwrite(self._progress_fd, data, 0) != len(data):
                raise OSError(errno.EIO, "short write")
            self._progress_len = len(data)  # never shorter than before: padded above
            if durable:
                os.fsync(self._progress_fd)
        except OSError as exc:
            raise self._files.not_writable(self.files.progress, exc) from None

    # -- writing -----------------------------------------------------------------------------------

    def commit_point(self, point: Point) -> None:
        """Persist ``point.token`` atomically, with how far into its answer delivery went."""
        if not point.token:
            raise ValueError("commit_point() needs a point with a token")
        self._write(point)
        self.committed = point.token
        if self.on_commit is not None:
            self.on_commit()

    def clear(self) -> None:
        """Forget the token (the subscription is lost), keeping url, external system id and filter."""
        self._write(Point(None))
        self.committed = None

    def _next_seq(self) -> int:
        if self._lock_fd is None:
            raise RuntimeError("TokenStore.open() must be called before writing the state file")
        self._seq += 1
        return self._seq

    def _write(self, point: Point) -> None:
        # A cleared token still carries a sequence number: older progress records lose to it.
        progress = {"seq": self._next_seq(), "events": point.events, "digest": point.digest}
        doc = {"version": STATE_VERSION, "token": point.token, "url": self.url, **self._identity}
        doc.update(saved_at=stamp(), progress=progress)
        data = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            write_private_file(self.path, data, sync_directory=True)
        except OSError as exc:
            if is_link_error(exc, self.path):
                raise self._files.link_refused(self.path) from None
            raise self._files.not_writable(self.path, exc) from None
