"""Where kata-events keeps its files: the state directory, the state file and its companions.

The one place that names them (the state store writes them, `status`, `state` and the emulator
find them here). Pure path arithmetic: it never opens, creates or checks a file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


def default_state_path(external_system_id: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the token is kept when ``--state-file`` is not given (an absolute path).

    ``$STATE_DIRECTORY/<id>.token`` under systemd's ``StateDirectory=`` (the first of its
    colon-separated paths), else ``<id>.token`` in `state_home`.
    """
    # The id comes from configuration: keep it from escaping the directory.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", external_system_id).lstrip(".") or "default"
    state_directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    directory = Path(state_directory) if state_directory else state_home(environ)
    return Path(os.path.abspath(directory / f"{name}.token"))


def state_home(environ: Mapping[str, str] = os.environ) -> Path:
    """The user's kata-events state directory: ``$XDG_STATE_HOME/kata-events``, else
    ``~/.local/state/kata-events`` (the emulator keeps its CA and approvals under it too)."""
    xdg = environ.get("XDG_STATE_HOME", "")
    # The XDG base directory spec says relative paths are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "kata-events"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "kata-events"


@dataclass(frozen=True)
class RunFiles:
    """The state file of a run and its companions, kept next to it as ``<state>.<kind>``."""

    state: Path

    #: The companions: progress inside a page, the status record (``status`` reads it), the lock.
    progress = property(lambda self: self.state.with_name(f"{self.state.name}.progress"))
    status = property(lambda self: self.state.with_name(f"{self.state.name}.status"))
    lock = property(lambda self: self.state.with_name(f"{self.state.name}.lock"))
