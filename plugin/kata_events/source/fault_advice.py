"""What to say when a request keeps failing the same way: the fix `kata-events check` would name.

A wrong host or port retries for ever, and "Connection refused; retrying in 0.4 s" says nothing
about the configuration. Once the same failure has lasted `PERSISTENT_AFTER` seconds, the retry
line names the address and port tried and the fix. Pure: no clock of its own, no I/O, no logging.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence
from urllib.parse import urlsplit

#: A failure repeated unchanged for this long is no longer a blip: the retry line says the fix.
PERSISTENT_AFTER = 180.0

_NUMBERS = re.compile(r"\d+(\.\d+)?")


class RepeatedFault:
    """Tracks how long requests have been failing the same way (numbers in the message ignored)."""

    def __init__(self) -> None:
        self._shape: Optional[str] = None
        self._since = 0.0

    def seen(self, message: str, now: float) -> float:
        """Note a failure; return for how long it has lasted when that is over `PERSISTENT_AFTER`,
        else 0."""
        shape = _NUMBERS.sub("#", message)
        if shape != self._shape:
            self._shape, self._since = shape, now
        lasted = now - self._since
        return lasted if lasted >= PERSISTENT_AFTER else 0.0

    def clear(self) -> None:
        """An answer came: the next failure starts a new count."""
        self._shape = None


def _addresses(urls: Sequence[str]) -> str:
    shown = []
    for url in urls:
        parts = urlsplit(url)
        shown.append(f"{parts.hostname} port {parts.port or 443}")
    return ", ".join(shown)


def persistent_advice(message: str, urls: Sequence[str], lasted: float) -> str:
    """The sentence added to a retry line (ending in "; ") for a failure lasting ``lasted`` s."""
    text = message.lower()
    head = f"failing the same way for {lasted / 60:.0f} min"
    if text.startswith("http "):
        return (
            f"{head}: the Central Node answers, with errors; check its health in its web interface "
            "(kata-events retries until it recovers); "
        )
    if "cannot connect" in text or "did not answer" in text or "closed the connection" in text:
        return (
            f"{head}: nothing usable answers at {_addresses(urls)}: check the address and port in "
            "url, that the Central Node is up, and that firewalls let this host through; "
            "`kata-events check` (same options as run) tests DNS, TCP and TLS step by step; "
        )
    return f"{head}: `kata-events check` (same options as run) tests each step and names the fix; "
