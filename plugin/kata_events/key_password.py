"""The client's key: its passphrase, whether it can be used with its certificate, who may read it.

The passphrase of an encrypted key: where it comes from, and reading it when the key is loaded.
The first of these that is set gives it: the file named by ``key_password_file``, the variable
``KATA_EVENTS_KEY_PASSWORD`` (for containers), the systemd credential ``key-password`` (in
``$CREDENTIALS_DIRECTORY``). A file is read again each time the key is loaded, so a key renewed in
place with its passphrase file is picked up without a restart. One trailing line break (``echo
secret > file``) is not part of the passphrase.

The passphrase itself appears in no message, log line, exception or ``repr``: messages name where
it came from (`KeyPassword.origin`), never what it is.

`pair_problem` says whether a certificate and key can be used together, and if not why, in the user's
words: ``run`` (before any network traffic) and ``check`` ask it, so both name the same problem with
the same message and exit code (78). OpenSSL only says ``PEM lib`` or ``KEY_VALUES_MISMATCH``; it
looks at what each file holds to tell swapped files, an encrypted key without a passphrase or with
a wrong one, and a key of another certificate apart. `exposures` says whether the key files are
readable by other accounts. This module reads files and never modifies, logs or prints anything.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Any, Dict, Optional

from kata_events.exits import ExitStatus, UserError
from kata_events.private_file import PathLike

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


def configured(config: Any) -> Optional[KeyPassword]:
    """The passphrase source of a configuration (its ``key_password_file``, its ``key_password``, a
    systemd credential), or None when none is given (an unencrypted key)."""
    if config.key_password_file is not None:
        return KeyPassword(f"key_password_file {config.key_password_file}", config.key_password_file)
    if config.key_password is not None:
        return KeyPassword("the variable KATA_EVENTS_KEY_PASSWORD", value=config.key_password)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL_NAME
        if os.path.exists(path):
            return KeyPassword(f"the systemd credential {CREDENTIAL_NAME} ({path})", path)
    return None


_MAKE_NEW = (
    "or make a new pair with `kata-events init` (a new certificate needs a new approval on the Central Node)"
)


def _text(path: PathLike) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 20).decode("ascii", "replace")
    except OSError:
        return ""


def exposures(key: PathLike, key_password: Optional[KeyPassword] = None) -> Dict[str, str]:
    """The key, and the file holding its passphrase, when accounts other than the owner may read
    them (the way ssh refuses an unprotected key, but a warning: the key works): what is wrong and
    the fix, by path."""
    thief = "whoever reads it can fetch this external system's events as kata-events does"
    files = [(key, "the private key", thief)]
    if key_password is not None and key_password.path is not None:
        files.append((key_password.path, "the key's passphrase file", "it unlocks the encrypted key"))
    found = {}
    for path, what, risk in files:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        who = " and ".join(w for w, bits in (("its group", 0o070), ("every account", 0o007)) if mode & bits)
        if who:
            found[str(path)] = f"{what} {path} is accessible by {who} (mode {mode:04o}): {risk}; fix it with "
            found[str(path)] += f"chmod 600 {path}"
    return found


def pair_problem(cert: PathLike, key: PathLike, passphrase: Optional[KeyPassword] = None) -> Optional[str]:
    """None when ``key`` (opened by ``passphrase`` if encrypted) is the private key of the certificate
    in ``cert``; else what is wrong and the fix."""
    cert_text, key_text = _text(cert), _text(key)
    has_cert = "-----BEGIN CERTIFICATE-----" in cert_text
    key_has_key = "PRIVATE KEY-----" in key_text
    key_has_cert = "-----BEGIN CERTIFICATE-----" in key_text
    if not key_has_key and key_has_cert and not has_cert and "PRIVATE KEY-----" in cert_text:
        return (
            f"the certificate and key files are swapped: set cert to {key} (it holds the "
            f"certificate) and key to {cert} (it holds the private key)"
        )
    if not key_has_key and key_has_cert:
        return (
            f"the key file {key} holds a certificate, not a private key: set key to the private key "
            f"file (PEM, '-----BEGIN ... PRIVATE KEY-----') made with the certificate {cert}, " + _MAKE_NEW
        )
    if not has_cert and "PRIVATE KEY-----" in cert_text:
        return (
            f"the certificate file {cert} holds a private key, not a certificate: set cert to the "
            f"certificate file (PEM, '-----BEGIN CERTIFICATE-----') and key to the private key "
            "(cert and key swapped?)"
        )
    encrypted = "ENCRYPTED PRIVATE KEY-----" in key_text or "Proc-Type: 4,ENCRYPTED" in key_text
    password = b""  # never None: OpenSSL would prompt on the terminal for an encrypted key's passphrase
    if encrypted:
        if passphrase is None:
            return f"the key {key} is protected by a passphrase, and none is given: {HOW}"
        try:
            password = passphrase()
        except UserError as exc:
            return str(exc)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key), password=password)  # type: ignore[arg-type]
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            return (
                f"the key {key} does not belong to the certificate {cert}: set key to the private "
                f"key made with this certificate, " + _MAKE_NEW
            )
        if encrypted and passphrase is not None:
            return (
                f"the passphrase from {passphrase.origin} does not open the key {key}: put the "
                f"passphrase of {key} there, or point key_password_file at the file that holds it"
            )
        if not has_cert:
            what = f"the certificate file {cert} holds no PEM certificate"
        elif not key_has_key:
            what = f"the key file {key} holds no PEM private key"
        else:
            what = f"the certificate {cert} and key {key} cannot be used together ({exc.reason or exc})"
        return (
            f"{what}: give the client certificate as cert and its private key as key (both PEM), " + _MAKE_NEW
        )
    except OSError as exc:
        return f"cannot read the certificate {cert} or key {key}: {exc.strerror or exc}"
    return None
