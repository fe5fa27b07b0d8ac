"""Overall deadlines on the network waits of one request, so a trickling server cannot hold it for ever.

Per-read socket timeouts do not bound a request: a server (or a broken proxy) that accepts TCP and
then sends one byte of its TLS handshake, its headers or its body every few seconds resets the
timeout with every byte. So the runner also puts an overall limit on each blocking wait: from the
connection to the response headers, then for each chunk of the body. When a limit passes, SIGALRM
raises `RequestAbandoned` in the main thread (the same way SIGTERM raises `StopRequested` there),
which unwinds the blocked call; the runner drops the connection and retries with backoff.

Only the main thread can use it (``setitimer`` and signal handlers are the main thread's), and only
once `install` has put the handler in place: without it, `limit` does nothing, so a runner driven
by tests without signals never gets a stray SIGALRM. This module never logs and never writes to
stdout.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Any, Iterator, Optional, Tuple


class RequestAbandoned(BaseException):
    """A network wait passed its deadline (BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, seconds: float, stage: str) -> None:
        super().__init__(f"no {stage} within {seconds:.0f} s")
        self.seconds = seconds
        self.stage = stage


class Deadlines:
    """Arms a one-shot SIGALRM around a blocking wait; its handler raises `RequestAbandoned` inside."""

    def __init__(self) -> None:
        self.enabled = False
        self._armed: Optional[Tuple[float, str]] = None

    def install(self) -> Any:
        """Put the SIGALRM handler in place (main thread only); returns the previous handler."""
        previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self.enabled = True
        return previous

    def uninstall(self) -> None:
        """Stop arming deadlines (before the previous SIGALRM handler is put back)."""
        self.enabled = False
        self._armed = None
        signal.setitimer(signal.ITIMER_REAL, 0)

    @contextlib.contextmanager
    def limit(self, seconds: Optional[float], stage: str) -> Iterator[None]:
        """Raise `RequestAbandoned` if the body of the ``with`` still blocks after ``seconds``."""
        if not self.enabled or seconds is None:
            yield
            return
        self._armed = (seconds, stage)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            # Disarmed first: an alarm landing between the two lines then finds nothing to raise.
            self._armed = None
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_alarm(self, signum: int, frame: Optional[FrameType]) -> None:
        armed, self._armed = self._armed, None
        if armed is not None:
            raise RequestAbandoned(*armed)
