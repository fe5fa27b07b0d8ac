"""Replacing a file atomically, readable by its owner only from the first byte.

One writer for keys, certificates, configurations, the emulator's approvals and the status record:
a temporary file beside the target, created with ``O_EXCL`` (so it never follows a planted link)
and mode 0600, filled, optionally fsynced, then renamed over the target, so a reader sees the old
file or the new one, never half of one. This module never logs.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def write_private_file(path: PathLike, data: bytes, mode: int = 0o600, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` (``mode`` from the start); ``sync``: fsync before the rename."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
