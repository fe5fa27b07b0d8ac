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

    OK = 0  #: Clean stop: signal, end of input, ``--once`` caught up.
    USAGE = 64  #: The command line is wrong (EX_USAGE).
    NO_INPUT = 66  #: A named file (config, certificate, key, CA) is missing or unreadable (EX_NOINPUT).
    UNAVAILABLE = 69  #: The platform lacks POSIX calls kata-events needs (fcntl, termios) (EX_UNAVAILABLE).
    IO_ERROR = 74  #: Writing the events failed (stdout on a full or failing disk) (EX_IOERR).
    CANT_CREATE = 73  #: The state file or its directory cannot be written (EX_CANTCREAT).
    TEMP_FAIL = 75  #: Another instance holds the state file's lock; try again later (EX_TEMPFAIL).
    CONFIG = 78  #: The configuration is invalid, or the server rejects it for good (EX_CONFIG).


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
