"""How many bytes a write into stdout's pipe can take whole, so that no kill ever tears a line.

Linux copies a write into a pipe whole when its free room holds it, and a kill cannot land inside
that copy. The room is not ``size - FIONREAD``: the kernel keeps a pipe's bytes in page-sized
slots, merges a write's remainder into the last slot only when it fits there, and counts a slot
half read whole. `PipeRoom` keeps the same picture of our own writes (FIONREAD says how much is
left): a write of ``n`` bytes fits whole when ``ceil(n / page)`` slots are free. Bytes it did not
write itself (foreign content, a short write it did not expect) make it unsure: no room until the
pipe is empty. `grow_pipe` grows the pipe at start (``F_SETPIPE_SZ``). Pure bookkeeping and
ioctls; never logs.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios
from collections import deque
from typing import Deque, List, Optional

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
#: The size asked for when /proc/sys/fs/pipe-max-size cannot be read (Linux's default maximum).
DEFAULT_MAX_PIPE = 1 << 20
PIPE_MAX_SIZE_FILE = "/proc/sys/fs/pipe-max-size"


def grow_pipe(fd: int, want: Optional[int] = None) -> int:
    """Make the pipe on ``fd`` as large as an unprivileged process may (or ``want``); its size."""
    if want is None:
        try:
            with open(PIPE_MAX_SIZE_FILE) as f:
                want = int(f.read().strip())
        except (OSError, ValueError):
            want = DEFAULT_MAX_PIPE
    try:
        size = fcntl.fcntl(fd, F_GETPIPE_SZ)
    except OSError:
        return 0
    try:
        # F_SETPIPE_SZ answers the size the pipe now has.
        return fcntl.fcntl(fd, F_SETPIPE_SZ, want) if want > size else size
    except OSError:
        # EPERM past the user's pipe budget, EBUSY: keep the size it has.
        return size


def unread_bytes(fd: int, request: int = termios.FIONREAD) -> int:
    """Bytes not yet read from the pipe (``FIONREAD`` on the write end), or ``request``'s count."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, request, buf, True)
    return buf[0]


class PipeRoom:
    """The pipe's slots as our writes filled them; `room` is what a write can take whole now."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.size = size
        self.slots = max(1, size // self.page)
        # One [offset, length] per slot in use, oldest first, as the kernel's pipe_buffer has them.
        self._bufs: Deque[List[int]] = deque()
        self._total = 0
        #: True while bytes we did not write may be in the pipe: no room until it is empty.
        self.unsure = True

    @property
    def capacity(self) -> int:
        """The largest write that ever fits whole."""
        return self.slots * self.page

    def room(self) -> int:
        """Bytes a write can take whole now (0 while unsure)."""
        unread = unread_bytes(self.fd)
        consumed = self._total - unread
        if unread == 0:
            self._bufs.clear()
            self.unsure = False
        elif consumed < 0:
            # More in the pipe than we wrote: another writer. Wait until it is empty.
            self.unsure = True
        while consumed > 0 and self._bufs and not self.unsure:
            head = self._bufs[0]
            step = min(head[1], consumed)
            head[0] += step
            head[1] -= step
            consumed -= step
            if head[1] == 0:
                self._bufs.popleft()
        self._total = unread
        return 0 if self.unsure else (self.slots - len(self._bufs)) * self.page

    def wrote(self, n: int, whole: bool = True) -> None:
        """``n`` bytes went in; ``whole`` False: fewer than asked (the model was wrong)."""
        if n <= 0:
            return
        if self.unsure or not whole:
            self.unsure = True
            return
        page, bufs, rest = self.page, self._bufs, n
        chars = n % page
        if chars and bufs and sum(bufs[-1]) + chars <= page:  # offset + length of the last slot
            bufs[-1][1] += chars
            rest -= chars
        while rest > 0:
            take = min(page, rest)
            bufs.append([0, take])
            rest -= take
        self._total += n
