"""A stop with Fluent Bit's exec input stalled at the other end of the stdout pipe: who it is, and
emptying the pipe for it.

Fluent Bit (5.1) stops its engine before it signals the exec input's child; the input reads on
into a ring buffer nothing empties any more, and once it is full (1,024 records) every line costs
ten tries 100 ms apart before it is dropped (plugins/in_exec/in_exec.c `in_exec_collect`,
src/flb_input_chunk.c `append_to_ring_buffer`): a pipe holding 600 lines keeps it stopping for ten
minutes. Those lines are not delivered (the settle rule counts them as not taken), so at a stop this
process reads them out itself; the reader gets end of file after what its own buffer holds. Only
for Fluent Bit, the one reader known to stall like this: any other slow reader still delivers what
the pipe holds. Nothing here writes to stdout but the rest of a line the reader had begun to read.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from typing import Callable, List, Optional

#: Command names (``/proc/PID/comm``) of Fluent Bit's binaries.
FLUENT_BIT_NAMES = frozenset({"fluent-bit", "td-agent-bit"})
#: How many ancestors are looked at: Fluent Bit, or a shell between it and this process.
ANCESTORS = 3
#: At a stop, how long Fluent Bit may take to empty the pipe before it counts as stalled. A running
#: exec input empties it in milliseconds; a stalled one takes a second per line.
STALL_WATCH = 0.5
#: How often the pipe is looked at while watching.
STALL_POLL = 0.05


def _parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # pid (comm) state ppid ...: comm may hold spaces and parentheses; the last ')' ends it.
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _reads_pipe(pid: int, pipe: str) -> bool:
    """Whether process ``pid`` holds ``pipe`` (``pipe:[inode]``) open for reading."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != pipe:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
        if flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR):
            return True
    return False


def fluent_bit_reader(fd: int) -> Optional[int]:
    """The pid of the Fluent Bit among this process's ancestors that reads the pipe behind ``fd``."""
    try:
        pipe = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if not pipe.startswith("pipe:"):
        return None
    pid: Optional[int] = os.getpid()
    for _ in range(ANCESTORS):
        pid = _parent(pid) if pid else None
        if not pid or pid <= 1:
            return None
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name in FLUENT_BIT_NAMES and _reads_pipe(pid, pipe):
            return pid
    return None


def stalled(unread: Callable[[], int]) -> bool:
    """Whether bytes stay unread in the pipe for `STALL_WATCH` seconds (``unread`` measures them)."""
    deadline = time.monotonic() + STALL_WATCH
    while unread() > 0 and time.monotonic() < deadline:
        time.sleep(STALL_POLL)
    return unread() > 0


def empty_pipe(fd: int) -> bytes:
    """Read out the whole lines the pipe behind ``fd`` holds (returned), through a read end of our
    own. The reader may hold the start of a line: the pipe's bytes up to the first newline are
    written back, so it gets that line whole (Fluent Bit would hand a fragment to its parser)."""
    reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    chunks: List[bytes] = []
    try:
        # Until the pipe is empty (BlockingIOError) or has no writer left (end of file).
        with suppress(BlockingIOError):
            for chunk in iter(lambda: os.read(reader, 1 << 20), b""):
                chunks.append(chunk)
    finally:
        os.close(reader)
    data = b"".join(chunks)
    cut = data.find(b"\n") + 1 or len(data)
    head = data[:cut]
    deadline = time.monotonic() + STALL_WATCH
    while head and time.monotonic() < deadline:
        try:
            head = head[os.write(fd, head) :]
        except BlockingIOError:
            time.sleep(STALL_POLL)
        except BrokenPipeError:
            break
    return data[cut:]
