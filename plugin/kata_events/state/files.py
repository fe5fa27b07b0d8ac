"""The safety rules of the state directory's files: made 0700/0600, never through a link, one lock.

`StateFiles` opens, creates and checks the files kata-events keeps next to a state file, and words
every refusal so that the user knows what to fix. It never logs and never writes to stdout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import stat
from pathlib import Path
from typing import Optional

from kata_events.state.errors import StateCorrupt, StateNotWritable

FIX_HINT = "choose a writable location with --state-file (KATA_EVENTS_STATE_FILE)"


class StateFiles:
    """The files of one state file's directory, and the messages of their failures."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def make_directory(self, directory: Path) -> None:
        for d in [*reversed(directory.parents), directory]:
            if d.is_dir():
                continue
            try:
                os.mkdir(d, 0o700)
                os.chmod(d, 0o700)  # whatever the umask
            except FileExistsError:
                if d.is_dir():
                    continue  # made by another process meanwhile
                # Advising to "make it a directory" would tell the user to replace a file, /etc/passwd say.
                raise StateNotWritable(
                    f"cannot write the state file {self.path}: {d} is "
                    f"{'a file' if d.is_file() else 'not a directory'}, not a directory that can hold it; "
                    f"{FIX_HINT} (a path inside a directory)"
                ) from None
            except OSError as exc:
                raise self.not_writable(d, exc) from None

    def open(self, path: Path, flags: int) -> int:
        """Open a file of the state directory (mode 0600 if created), never through a symbolic
        link: a link planted there cannot make kata-events write into the file it names."""
        try:
            return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if is_link_error(exc, path):
                raise self.link_refused(path) from None
            raise self.not_writable(path if path.exists() else path.parent, exc) from None

    def link_refused(self, path: Path) -> StateNotWritable:
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        return StateNotWritable(
            f"{path} is a symbolic link{target}: kata-events never follows links where it writes "
            f"its state, so nothing can make it write into another file; the link's target is "
            f"untouched. Remove the link (rm {path}), make {path.parent} writable only by the "
            f"account kata-events runs as (chmod 700 {path.parent}), or {FIX_HINT}"
        )

    def not_writable(self, where: Path, exc: OSError) -> StateNotWritable:
        try:
            user = f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
        except KeyError:
            user = f"uid {os.geteuid()}"
        return StateNotWritable(
            f"cannot write the state file {self.path}: {where}: {exc.strerror or exc}; make "
            f"{self.path.parent} a directory writable by {user}, or {FIX_HINT}"
        )

    def corrupt(self, what: str) -> StateCorrupt:
        return StateCorrupt(
            f"state file {self.path} {what}; kata-events writes it atomically, so it was changed by "
            f"something else: move it away (e.g. mv {self.path} {self.path}.bad) to start a new "
            "subscription, or restore it"
        )


def directory_permissions(directory: Path) -> Optional[str]:
    """Who else may write in the state directory: a warning (None when fine), or StateNotWritable.

    Every account writing there (o+w) without the sticky bit could replace the state file or
    plant links: refused. Its group writing there (or every account, with the sticky bit, as in
    /tmp: others can still create files under kata-events' names): warned.
    """
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return None
    shown = f"mode {stat.S_IMODE(mode):04o}"
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise StateNotWritable(
            f"state directory {directory} can be written by every account ({shown}, no sticky "
            "bit): anyone could replace the state file or plant links to make kata-events "
            f"overwrite other files. Fix it with chmod o-w {directory} (better chmod 700 "
            f"{directory}), or {FIX_HINT}"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "every account (sticky bit set)" if mode & stat.S_IWOTH else "its group"
        return (
            f"state directory {directory} can be written by {who} ({shown}): they could create "
            f"files under the state file's names; chmod 700 {directory} unless that is meant"
        )
    return None


def is_link_error(exc: OSError, path: Path) -> bool:
    """O_NOFOLLOW met a symbolic link (ELOOP on Linux, EMLINK or EFTYPE elsewhere)."""
    return exc.errno in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", -1)) or os.path.islink(path)


def unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
