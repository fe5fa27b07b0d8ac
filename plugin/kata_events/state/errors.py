"""The state's errors: what cannot be worked around, each with the exit code it ends a run with.

This module never logs and never touches a file.
"""

from __future__ import annotations

from typing import Optional

from kata_events.exits import ExitStatus, UserError


class StateError(UserError):
    """A problem with the state file the process cannot work around; ``exit_code`` says which."""

    default_exit = ExitStatus.CONFIG

    def __init__(self, message: str, holder_pid: Optional[int] = None) -> None:
        super().__init__(message, self.default_exit)
        self.holder_pid = holder_pid


class StateNotWritable(StateError):
    """The state file or its directory cannot be created, read or written."""

    default_exit = ExitStatus.CANT_CREATE


class StateLocked(StateError):
    """Another process holds the state file's lock; ``holder_pid`` names it when known."""

    default_exit = ExitStatus.TEMP_FAIL


class StateForeign(StateError):
    """The state file belongs to another external system: another integration's position.

    Overwriting it would lose that integration's place in its stream for good, so the file is left
    as it is and the run refused; ``state reset`` or another ``--state-file`` is the user's choice.
    """


class StateCorrupt(StateError):
    """The state file exists but is not a state file this version understands."""
