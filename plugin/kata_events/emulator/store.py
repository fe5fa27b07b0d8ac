"""The emulator's event store and subscriptions: which events exist, and which a request gets.

`EventStore` is the part of `kata_events.emulator.server.Emulator` that keeps the events (a
backlog, the steady source materialised lazily from the clock, additions, the retention window),
the subscriptions with their tokens, and picks a page for a request, long polling while there is
none. Every ``*_locked`` method needs the emulator's lock. No sockets, no HTTP.
"""

from __future__ import annotations

import bisect
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from kata_events.emulator.answering import _bad_request, _HttpError
from kata_events.emulator.filters import Filter, FilterSyntaxError, compile_filter

log = logging.getLogger("kata_events.emulator")

#: A client going back to the token of a page it delivered a few seconds ago (a stop on a pipe, the
#: settle time) asks again with a token up to hundreds of pages old when pages are small.
TOKENS_KEPT_PER_SUBSCRIPTION = 4096


@dataclass
class _Subscription:
    id: str
    external_system_id: str
    filter: Optional[Filter]
    created: float
    last_used: float
    tokens: List[str] = field(default_factory=list)
    # Filter result per template (None until computed), unless the filter reads per-event fields.
    template_matches: Optional[List[Optional[bool]]] = None
    per_event: bool = False


class _Page:
    """The events chosen for one response: parallel lists of seq, timestamp and template."""

    def __init__(self, seqs: List[int], stamps: List[int], templates: List[int], next_position: int) -> None:
        self.seqs = seqs
        self.stamps = stamps
        self.templates = templates
        self.next_position = next_position

    def __len__(self) -> int:
        return len(self.seqs)


class EventStore:
    """The events and subscriptions of `Emulator` (a mixin: it uses the emulator's lock and fields)."""

    def _next_seq_locked(self) -> int:
        return self._base_seq + len(self._stamps)

    def _append_locked(self, count: int, when: float) -> None:
        stamp = int(when * 1_000_000)
        if self._stamps and stamp < self._stamps[-1]:
            stamp = self._stamps[-1]
        first = self._next_seq_locked()
        index = self.factory.template_index
        self._stamps.extend([stamp] * count)
        self._templates.extend(index(seq) for seq in range(first, first + count))

    def _catch_up_locked(self, now: float) -> None:
        """Materialize the steady source's events due by ``now``."""
        if self.rate <= 0 or self._rate_start <= 0:
            return
        due = int((now - self._rate_start) * self.rate)
        if due <= self._rate_emitted:
            return
        first_seq = self._next_seq_locked()
        last = self._stamps[-1] if self._stamps else 0
        for i in range(self._rate_emitted, due):
            stamp = max(last, int((self._rate_start + (i + 1) / self.rate) * 1_000_000))
            self._stamps.append(stamp)
            last = stamp
        self._templates.extend(
            self.factory.template_index(s) for s in range(first_seq, first_seq + due - self._rate_emitted)
        )
        self._rate_emitted = due

    def _next_rate_event_at(self) -> float:
        if self.rate <= 0:
            return math.inf
        return self._rate_start + (self._rate_emitted + 1) / self.rate

    def _expire_locked(self, now: float) -> None:
        """Drop events and subscriptions older than the retention window."""
        cutoff = int((now - self.retention) * 1_000_000)
        drop = bisect.bisect_left(self._stamps, cutoff)
        if drop:
            del self._stamps[:drop]
            del self._templates[:drop]
            self._base_seq += drop
        idle_cutoff = now - self.retention
        for sub in [s for s in self._subscriptions.values() if s.last_used < idle_cutoff]:
            self._drop_subscription_locked(sub.id)
            log.info("subscription %s of %s expired (idle)", sub.id, sub.external_system_id)

    def _drop_subscription_locked(self, sub_id: str) -> None:
        sub = self._subscriptions.pop(sub_id, None)
        if sub is not None:
            for token in sub.tokens:
                self._tokens.pop(token, None)

    def _matches_locked(self, sub: _Subscription, index: int) -> bool:
        flt = sub.filter
        assert flt is not None
        template = self._templates[index]
        if sub.per_event:
            seq = self._base_seq + index
            return flt.matches(self.factory.event_dict(seq, self._stamps[index], template))
        cache = sub.template_matches
        assert cache is not None
        result = cache[template]
        if result is None:
            # EmulatorSeq/Timestamp are not read by this filter, so any values do.
            result = cache[template] = flt.matches(self.factory.event_dict(0, 0, template))
        return result

    def _page_locked(self, sub: _Subscription, position: int, max_events: int) -> _Page:
        start = max(position, self._base_seq) - self._base_seq
        end = len(self._stamps)
        if sub.filter is None:
            stop = min(end, start + max_events)
            seqs = list(range(self._base_seq + start, self._base_seq + stop))
            return _Page(seqs, self._stamps[start:stop], self._templates[start:stop], self._base_seq + stop)
        picked: List[int] = []
        index = start
        while index < end and len(picked) < max_events:
            if self._matches_locked(sub, index):
                picked.append(index)
            index += 1
        stamps = self._stamps
        templates = self._templates
        return _Page(
            [self._base_seq + i for i in picked],
            [stamps[i] for i in picked],
            [templates[i] for i in picked],
            self._base_seq + index,
        )

    def _serve_page(
        self,
        ext_id: str,
        token: Optional[str],
        filter_text: Optional[str],
        max_events: int,
        timeout: float,
        shift: int = 0,
    ) -> Tuple[Optional[_Page], str]:
        """Pick the events for a response, long polling when none are available; ``shift``: start
        that many events before the token's position, or after the oldest event for a new subscription
        (the ``other_events`` fault)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            now = time.time()
            self._catch_up_locked(now)
            self._expire_locked(now)
            if token:
                entry = self._tokens.get(token)
                sub = self._subscriptions.get(entry[0]) if entry else None
                if entry is None or sub is None or sub.external_system_id != ext_id:
                    raise _HttpError(404, {"error": "Subscription not found"})
                position = max(self._base_seq, entry[1] - shift)
            else:
                try:
                    flt = compile_filter(filter_text)
                except FilterSyntaxError as exc:
                    raise _bad_request(f"filter: {exc}") from None
                sub = _Subscription(
                    id=secrets.token_hex(8), external_system_id=ext_id, filter=flt, created=now, last_used=now
                )
                if flt is not None:
                    sub.per_event = flt.uses_field("EmulatorSeq") or flt.uses_field("Timestamp")
                    if not sub.per_event:
                        sub.template_matches = [None] * self.factory.count
                self._subscriptions[sub.id] = sub
                position = self._base_seq + shift
                log.info("new subscription %s for %s (filter: %s)", sub.id, ext_id, filter_text or "none")
            while True:
                sub.last_used = time.time()
                page = self._page_locked(sub, position, max_events)
                if len(page) or self._stopping.is_set():
                    break
                position = page.next_position
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake = min(remaining, max(0.0, self._next_rate_event_at() - time.time()) + 0.001)
                self._changed.wait(wake)
                if self._stopping.is_set():
                    return None, ""
                now = time.time()
                self._catch_up_locked(now)
                self._expire_locked(now)
                if sub.id not in self._subscriptions:
                    raise _HttpError(404, {"error": "Subscription not found"})
            sub.last_used = time.time()
            new_token = secrets.token_urlsafe(24)
            self._tokens[new_token] = (sub.id, page.next_position)
            sub.tokens.append(new_token)
            if len(sub.tokens) > TOKENS_KEPT_PER_SUBSCRIPTION:
                for old in sub.tokens[:-TOKENS_KEPT_PER_SUBSCRIPTION]:
                    self._tokens.pop(old, None)
                del sub.tokens[:-TOKENS_KEPT_PER_SUBSCRIPTION]
            return page, new_token
