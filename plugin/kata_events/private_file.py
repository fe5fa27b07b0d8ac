"""Replacing a file atomically, readable by its owner only from the first byte.

One writer for keys, certificates, configurations, the emulator's approvals and the status record:
a temporary file beside the target, created with ``O_EXCL`` (so it never follows a planted link)
and mode 0600 whatever the umask, filled, optionally fsynced, then renamed over the target (and
the directory fsynced when the rename itself must survive a power cut: the state file), so a reader
sees the old file or the new one, never half of one. This module never logs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def write_private_file(path: PathLike, data: bytes, sync: bool = True, sync_directory: bool = False) -> None:
    """Replace ``path`` with ``data``; ``sync``: fsync before the rename; ``sync_directory``: fsync
    the directory after it. Raises OSError."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not sync_directory:
        return
    fd = os.open(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (and some network mounts) refuse fsync on a directory: the rename is
        # done, only its durability across a power cut is weaker there.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
