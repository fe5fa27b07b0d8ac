"""What to say when a request keeps failing the same way: the fix `kata-events check` would name.

A wrong host or port retries for ever, and "Connection refused; retrying in 0.4 s" says nothing
about the configuration. Once the same failure has lasted `PERSISTENT_AFTER` seconds, the retry
line names the address and port tried and the fix. A failure is told by its structured fields
(`Unavailable.reason` and ``answered``), never by its text. Pure: no clock of its own, no I/O, no
logging.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple
from urllib.parse import urlsplit

from kata_events.source.errors import ApiError

#: A failure repeated unchanged for this long is no longer a blip: the retry line says the fix.
PERSISTENT_AFTER = 180.0


def _kind(exc: ApiError) -> Tuple[str, str, bool]:
    return type(exc).__name__, getattr(exc, "reason", ""), getattr(exc, "answered", True)


class RepeatedFault:
    """Tracks how long requests have been failing the same way (the same kind, reason, answer)."""

    def __init__(self) -> None:
        self._kind: Optional[Tuple[str, str, bool]] = None
        self._since = 0.0

    def seen(self, exc: ApiError, now: float) -> float:
        """Note a failure; return for how long it has lasted when that is over `PERSISTENT_AFTER`,
        else 0."""
        kind = _kind(exc)
        if kind != self._kind:
            self._kind, self._since = kind, now
        lasted = now - self._since
        return lasted if lasted >= PERSISTENT_AFTER else 0.0

    def clear(self) -> None:
        self._kind = None  # an answer came: the next failure starts a new count


def persistent_advice(exc: ApiError, urls: Sequence[str], lasted: float) -> str:
    """The sentence added to a retry line (ending in "; ") for a failure lasting ``lasted`` s."""
    _, reason, answered = _kind(exc)
    head = f"failing the same way for {lasted / 60:.0f} min"
    if reason == "http_error":
        return (
            f"{head}: the Central Node answers, with errors; check its health in its web interface "
            "(kata-events retries until it recovers); "
        )
    if not answered:
        addresses = ", ".join(f"{parts.hostname} port {parts.port or 443}" for parts in map(urlsplit, urls))
        return (
            f"{head}: nothing usable answers at {addresses}: check the address and port in "
            "url, that the Central Node is up, and that firewalls let this host through; "
            "`kata-events check` (same options as run) tests DNS, TCP and TLS step by step; "
        )
    return f"{head}: `kata-events check` (same options as run) tests each step and names the fix; "
