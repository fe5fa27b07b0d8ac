"""The passphrase of an encrypted client key: where it comes from, and reading it when the key is loaded.

The first of these that is set gives it: the file named by ``key_password_file``, the variable
``KATA_EVENTS_KEY_PASSWORD`` (for containers), the systemd credential ``key-password`` (in
``$CREDENTIALS_DIRECTORY``). A file is read again each time the key is loaded, so a key renewed in
place with its passphrase file is picked up without a restart. One trailing line break (``echo
secret > file``) is not part of the passphrase.

The passphrase itself appears in no message, log line, exception or ``repr``: messages name where
it came from (`KeyPassword.origin`), never what it is. This module never logs and never prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from kata_events.exits import ExitStatus, UserError

#: The name of the systemd credential looked for in ``$CREDENTIALS_DIRECTORY``.
CREDENTIAL_NAME = "key-password"

#: How to give a passphrase, for messages.
HOW = (
    "put the key's passphrase in a file (mode 0600) and name it with key_password_file "
    "(--key-password-file, KATA_EVENTS_KEY_PASSWORD_FILE), or set KATA_EVENTS_KEY_PASSWORD, or "
    f"give a systemd credential {CREDENTIAL_NAME} (LoadCredential=)"
)


class Secret:
    """A string that shows as ``<redacted>`` in every ``str``, ``repr`` and f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: only for handing it to OpenSSL."""
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


class KeyPassword:
    """Where the key's passphrase comes from (``path``: its file, whose change counts as new TLS
    files; None for the variable); calling it reads the passphrase (bytes)."""

    def __init__(self, origin: str, path: Optional[Path] = None, value: Optional[Secret] = None) -> None:
        self.origin, self.path, self._value = origin, path, value

    def __call__(self) -> bytes:
        """The passphrase; raises `UserError` (exit 66 or 78) when its file is unreadable or empty."""
        if self._value is not None:
            text = self._value.reveal().encode("utf-8")
        else:
            assert self.path is not None
            try:
                with open(self.path, "rb") as handle:
                    text = handle.read(64 * 1024)
            except OSError as exc:
                reason = (exc.strerror or "error").lower()
                raise UserError(
                    f"cannot read the key's passphrase from {self.origin}: {reason}",
                    ExitStatus.NO_INPUT,
                ) from None
        if text.endswith(b"\n"):
            text = text[:-1].removesuffix(b"\r")
        if not text:
            raise UserError(f"the key's passphrase from {self.origin} is empty: {HOW}", ExitStatus.CONFIG)
        return text

    def __repr__(self) -> str:
        return f"KeyPassword({self.origin})"


def configured(config: Any, environ: Mapping[str, str] = os.environ) -> Optional[KeyPassword]:
    """The passphrase source of a configuration (its ``key_password_file``, its ``key_password``, a
    systemd credential), or None when none is given (an unencrypted key)."""
    if config.key_password_file is not None:
        return KeyPassword(f"key_password_file {config.key_password_file}", config.key_password_file)
    if config.key_password is not None:
        return KeyPassword("the variable KATA_EVENTS_KEY_PASSWORD", value=config.key_password)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL_NAME
        if os.path.exists(path):
            return KeyPassword(f"the systemd credential {CREDENTIAL_NAME} ({path})", path)
    return None
