"""Retry delays: exponential backoff with full jitter, and the server's Retry-After honoured.

Pure apart from the random source, which a caller may replace.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Backoff:
    """Delay before the next retry: uniform in [0, min(cap, base * 2**attempt)] ("full jitter")."""

    base: float = 1.0  # seconds, the first ceiling
    cap: float = 300.0  # seconds, no delay is longer
    rand: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self, retry_after: Optional[float] = None) -> float:
        """The delay for this failure; a server's Retry-After is a floor, capped like the rest."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        delay = self.rand() * ceiling
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.cap))
        return delay

    def reset(self) -> None:
        """A request succeeded: the next failure starts from the base delay again."""
        self.attempt = 0


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """A server's Retry-After (seconds, or an HTTP date) as seconds from now; None when absent or
    not one of the two. Fractional seconds (``1.5``) are honoured too, as they always were."""
    if not value:
        return None
    try:
        seconds = float(value)
        if math.isfinite(seconds):
            return max(0.0, seconds)
    except ValueError:
        pass
    import urllib3.exceptions  # HTTP dates: urllib3's reading of them
    import urllib3.util

    try:
        return float(urllib3.util.Retry().parse_retry_after(value))
    except urllib3.exceptions.InvalidHeader:
        return None
