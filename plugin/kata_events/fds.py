"""What the standard file descriptors are connected to, and holding closed ones.

One classification serves both ends: which delivery guarantee stdout can give (pipe drain, TCP
acknowledgement, fsync) and whether stdin can carry acknowledgements. Nothing here reads or writes
the descriptors' data.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

_KINDS = {stat.S_IFIFO: "pipe", stat.S_IFSOCK: "socket", stat.S_IFREG: "file", stat.S_IFCHR: "chardev"}


def fd_kind(fd: int) -> Optional[str]:
    """``tty``, ``pipe``, ``socket``, ``file``, ``chardev`` or ``other``; None if it is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return "tty" if os.isatty(fd) else _KINDS.get(stat.S_IFMT(st.st_mode), "other")


def hold_closed_std_fds() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr, opened so that using it still fails.

    The next file opened takes the lowest free descriptor: with stdout closed, the state lock file
    became fd 1 and events were written into it, fsynced and committed, then lost. /dev/null opened
    read-only on fd 1 makes writes fail with EBADF, as on a closed stdout (the reader is gone,
    nothing is committed); write-only on fd 0 makes reads fail, as on a closed stdin.
    """
    for fd, flags in ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        if fd_kind(fd) is None:
            held = os.open(os.devnull, flags)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)
