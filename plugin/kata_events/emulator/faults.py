"""Injectable faults for the emulator: what each kind means, the compact spec syntax, and the queue.

Faults hit events-API requests only (never the control endpoints). They queue up in order: the fault
at the head of the queue first lets ``after`` requests through untouched, then hits ``count``
consecutive requests, then leaves the queue and the next fault starts counting.

Spec syntax (``--fault``, ``Fault.parse``)::

    KIND[xCOUNT][@AFTER][:key=value[,key=value...]]

    503          one 503
    503x3        three 503s in a row
    drop@10      let 10 requests through, then drop the connection mid-body once
    429:retry_after=2
    slow:delay=5,count=2
    huge_event:size=600000000
    other_events:shift=100

Pure data and a thread-safe queue: no sockets, no sleeping.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Tuple, Union

__all__ = ["FAULT_KINDS", "Fault", "FaultQueue", "FaultSpecError", "hostile_event"]

# kind -> what it does (shown in --help)
FAULT_KINDS: Dict[str, str] = {
    "500": "HTTP 500 Internal Server Error",
    "502": "HTTP 502 Bad Gateway with an HTML body, as a reverse proxy sends it",
    "503": "HTTP 503 Service Unavailable",
    "429": "HTTP 429 Too Many Requests with Retry-After: retry_after seconds (default 1)",
    "drop": "headers with the full Content-Length, about half the body, then the connection is closed",
    "truncated": "a 200 whose JSON is cut in half (Content-Length matches the cut body)",
    "no_events": 'a 200 whose body lacks "events"',
    "no_token": 'a 200 whose body lacks "continuationToken"',
    "slow": "wait delay seconds (default 5) before the first byte, then answer normally",
    "hang": "never answer: hold the connection until the client leaves or the emulator stops",
    "401": "revoke the approval of the requesting certificate, then 401 (until approved again)",
    "404": "delete the subscription of the token used, then 404 Subscription not found",
    "400": "HTTP 400 Bad Request whose reason names the continuation token as invalid",
    "414": "HTTP 414 URI Too Long, as a server or proxy with a short request-line limit answers",
    "trickle_headers": "send the status line and headers one byte every delay seconds, never ending",
    "trickle_body": "send headers, then the body one byte every delay seconds, never ending",
    "huge_token": "a 200 page whose continuationToken is 2 MiB long",
    "huge_event": "a 200 page whose first event is size bytes long (default 600 MB), made as it is sent",
    "deep_event": "a 200 page whose first event nests arrays depth levels deep (default 300,000)",
    "odd_token": (
        "a 200 page whose continuationToken holds a space, a quote, a control character and a "
        "non-ASCII letter"
    ),
    "other_events": "answer the token used with other events than it got before: its page starts "
    "shift events earlier (default 1), as a server that does not repeat an answer; a request "
    "without a token starts its new subscription shift events after the oldest event kept",
}

_KIND_RE = "|".join(sorted((re.escape(k) for k in FAULT_KINDS), key=len, reverse=True))
_SPEC_RE = re.compile(rf"^(?P<kind>{_KIND_RE})(?:x(?P<count>\d+))?(?:@(?P<after>\d+))?(?::(?P<opts>.*))?$")


class FaultSpecError(ValueError):
    """A fault description that cannot be understood."""


@dataclass
class Fault:
    """One fault: ``kind`` (see ``FAULT_KINDS``), hitting ``count`` requests after skipping ``after``."""

    kind: str
    count: int = 1
    after: int = 0
    retry_after: float = 1.0
    delay: float = 5.0
    size: int = 600_000_000
    depth: int = 300_000
    shift: int = 1
    # Progress, changed by the queue.
    remaining: int = field(default=-1, repr=False)
    skip: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        self.kind = str(self.kind).strip().lower()
        if self.kind not in FAULT_KINDS:
            raise FaultSpecError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        try:
            self.count = int(self.count)
            self.after = int(self.after)
            self.retry_after = float(self.retry_after)
            self.delay = float(self.delay)
            self.size = int(self.size)
            self.depth = int(self.depth)
            self.shift = int(self.shift)
        except (TypeError, ValueError) as exc:
            raise FaultSpecError(f"fault {self.kind}: {exc}") from None
        if self.count < 1:
            raise FaultSpecError(f"fault {self.kind}: count must be at least 1")
        if self.after < 0 or self.retry_after < 0 or self.delay < 0 or self.shift < 0:
            raise FaultSpecError(f"fault {self.kind}: after, retry_after, delay and shift cannot be negative")
        if self.size < 64 or self.depth < 1:
            raise FaultSpecError(f"fault {self.kind}: size must be at least 64 and depth at least 1")
        if self.remaining < 0:
            self.remaining = self.count
        if self.skip < 0:
            self.skip = self.after

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """A fault from the compact syntax (see the module docstring)."""
        match = _SPEC_RE.match(spec.strip().lower())
        if not match:
            raise FaultSpecError(
                f"cannot parse fault {spec!r}: expected KIND[xCOUNT][@AFTER][:key=value,...] "
                f"with KIND one of {', '.join(FAULT_KINDS)}"
            )
        values: Dict[str, Any] = {"kind": match.group("kind")}
        if match.group("count"):
            values["count"] = match.group("count")
        if match.group("after"):
            values["after"] = match.group("after")
        for option in filter(None, (match.group("opts") or "").split(",")):
            key, sep, value = option.partition("=")
            key = key.strip()
            if not sep or key not in _FIELDS - {"kind"}:
                raise FaultSpecError(
                    f"cannot parse fault {spec!r}: option {option!r} is not one of "
                    "count=N, after=N, retry_after=SECONDS, delay=SECONDS, size=BYTES, depth=N, "
                    "shift=N"
                )
            values[key] = value.strip()
        return cls(**values)

    @classmethod
    def from_obj(cls, obj: Union[str, Mapping[str, Any], Fault]) -> Fault:
        """A fault from a spec string, a JSON-style mapping, or a fault (copied)."""
        if isinstance(obj, Fault):
            return cls(
                obj.kind, obj.count, obj.after, obj.retry_after, obj.delay, obj.size, obj.depth, obj.shift
            )
        if isinstance(obj, str):
            return cls.parse(obj)
        if isinstance(obj, Mapping):
            unknown = set(obj) - _FIELDS
            if unknown:
                raise FaultSpecError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
            if "kind" not in obj:
                raise FaultSpecError('a fault needs a "kind"')
            return cls(**{k: obj[k] for k in obj})
        raise FaultSpecError(f"a fault is a spec string or an object, not {type(obj).__name__}")

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["remaining"] = self.remaining
        data["skip"] = self.skip
        return data


#: One block of the huge_event fault: a long string, and brackets and separators inside strings too.
_HUGE_BLOCK = b'{"Padding":"' + b"x" * 16000 + b'","Nested":[1,{"a":"}],{\\"["}]}'
_HUGE_HEAD = b'{"EventType":"huge_event","Parts":['
_DEEP_HEAD = b'{"EventType":"deep_event","Nest":'


def hostile_event(fault: Fault) -> Tuple[int, Iterator[bytes]]:
    """The length and the chunks of the event a huge_event or deep_event fault puts first in a page.

    Made as it is sent, a block at a time: the emulator never holds the event.
    """
    if fault.kind == "deep_event":
        depth, step = fault.depth, 65536
        opening = (b"[" * min(depth - at, step) for at in range(0, depth, step))
        closing = (b"]" * min(depth - at, step) for at in range(0, depth, step))
        chunks = [_DEEP_HEAD], opening, closing, [b"}"]
        size = len(_DEEP_HEAD) + 2 * depth + 1
    else:
        blocks = max(1, (fault.size - len(_HUGE_HEAD) - 2) // (len(_HUGE_BLOCK) + 1))
        per_chunk = 64
        rows = ((b"," + _HUGE_BLOCK) * min(per_chunk, blocks - at) for at in range(1, blocks, per_chunk))
        chunks = [_HUGE_HEAD, _HUGE_BLOCK], rows, [b"]}"]
        size = len(_HUGE_HEAD) + blocks * (len(_HUGE_BLOCK) + 1) - 1 + 2

    def generate() -> Iterator[bytes]:
        for part in chunks:
            yield from part

    return size, generate()


_FIELDS = frozenset({"kind", "count", "after", "retry_after", "delay", "size", "depth", "shift"})


class FaultQueue:
    """Faults waiting to hit events-API requests, in order. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: Deque[Fault] = deque()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._queue.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def take(self) -> Optional[Fault]:
        """The fault hitting this request, if any (call once per events-API request)."""
        with self._lock:
            if not self._queue:
                return None
            head = self._queue[0]
            if head.skip > 0:
                head.skip -= 1
                return None
            head.remaining -= 1
            if head.remaining <= 0:
                self._queue.popleft()
            return head

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [fault.to_dict() for fault in self._queue]

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)
