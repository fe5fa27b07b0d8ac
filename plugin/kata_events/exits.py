"""Exit codes (sysexits style) and the one exception type that carries a message for the user.

Every code the process can end with is named here; nothing else in the package uses a bare number.
Transient faults (network, server errors, a slow consumer) never end the process, so they have no
code. This module never logs and never writes to any stream: `cli` turns a `UserError` into one
line on stderr and its exit code.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Sequence


class ExitStatus(IntEnum):
    """The process exit codes, from ``sysexits.h``."""

    #: Clean stop: signal, end of input, ``--once`` caught up.
    OK = 0
    #: The command line is wrong (EX_USAGE).
    USAGE = 64
    #: A file the user named (config, certificate, key, CA) is missing or unreadable (EX_NOINPUT).
    NO_INPUT = 66
    #: This platform lacks what kata-events needs (POSIX: fcntl, termios) (EX_UNAVAILABLE).
    UNAVAILABLE = 69
    #: Writing the events failed (stdout on a full or failing disk) (EX_IOERR).
    IO_ERROR = 74
    #: The state file or its directory cannot be written (EX_CANTCREAT).
    CANT_CREATE = 73
    #: Another instance holds the state file's lock; try again later (EX_TEMPFAIL).
    TEMP_FAIL = 75
    #: The configuration is invalid, or the server rejects it for good (EX_CONFIG).
    CONFIG = 78


class UserError(Exception):
    """A failure the user can fix: ``str(error)`` says what is wrong and how to fix it.

    ``problems`` holds each problem separately when several were found at once (the message lists
    them all); for a single problem it holds just the message.
    """

    def __init__(
        self, message: str, exit_code: ExitStatus = ExitStatus.CONFIG, problems: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.exit_code = ExitStatus(exit_code)
        self.problems = tuple(problems) or (message,)
