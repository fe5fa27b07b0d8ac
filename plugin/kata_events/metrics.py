"""Prometheus metrics of a run: a text file for node_exporter's textfile collector, and /metrics.

Both are opt-in (``metrics_file``, ``metrics_listen``) and come from `prometheus_client`, imported
only then: a run without metrics pays nothing at start-up. The values are read from the runner at
each collection (a snapshot: an attribute per family, a dict by label value for those with a label
of their own, `OWN_LABELS`): no second set of counters to keep in step. prometheus_client replaces
the file atomically, every ``interval`` seconds and at the stop. Every sample carries the run's
labels (``node``, ``external_system_id``): several runs (a distributed KATA's Central Nodes) can
share one textfile directory, or be scraped as one job, without two series colliding.

This module never logs (the runner says when the file cannot be written), never writes to stdout.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

#: Each family: name (without ``kata_events_`` and the ``_total`` Prometheus adds to counters),
#: kind, help. docs/operations.md's table is made from it (`markdown_table`; a test compares).
FAMILIES: Tuple[Tuple[str, str, str], ...] = (
    ("events", "counter", "Events delivered to stdout."),
    ("bytes", "counter", "Bytes of answers received from the Central Node."),
    ("pages", "counter", "Answers (pages) delivered, empty ones included."),
    (
        "retries",
        "counter",
        "Failed requests retried, by reason: connection, timeout, http_error, tls, bad_response.",
    ),
    (
        "lag_seconds",
        "gauge",
        "Age of the newest event delivered while the server has more; 0 when caught up. The run's "
        "own view: once it has stopped it stays at its last value (0 after --once), where status "
        "counts the time since the last commit; alert on last_commit_timestamp_seconds for that.",
    ),
    ("last_commit_timestamp_seconds", "gauge", "When a continuation token was last saved (epoch seconds)."),
    ("unacknowledged_lines", "gauge", "Lines written and not yet acknowledged by the shipper (ack mode)."),
    ("up", "gauge", "1 while the Central Node answers, 0 while it refuses (401) or requests fail."),
    ("build_info", "gauge", "Always 1; the version in a label."),
)


#: The labels every family carries, in this order, before its own (``reason``, ``version``).
RUN_LABELS: Tuple[str, ...] = ("node", "external_system_id")
#: The families with a label of their own.
OWN_LABELS: Dict[str, str] = {"retries": "reason", "build_info": "version"}


def markdown_table() -> str:
    """The metrics table of docs/operations.md, generated from `FAMILIES`."""
    lines = ["| Metric | Type | Meaning |", "|---|---|---|"]
    for name, kind, text in FAMILIES:
        total = "_total" if kind == "counter" else ""
        own = "{" + OWN_LABELS[name] + "}" if name in OWN_LABELS else ""
        lines.append(f"| `kata_events_{name}{total}{own}` | {kind} | {text} |")
    return "\n".join(lines) + "\n"


@dataclass(eq=False)  # hashed by identity: the registry keeps its collectors in a dict
class Metrics:
    """Writes ``file`` every ``interval`` seconds and at `close`, and serves ``listen`` if given;
    every sample carries ``labels`` (`RUN_LABELS`: the run's node name and external system id).
    It is its registry's collector: a fresh snapshot at each collection."""

    snapshot: Callable[[], Any]
    file: Optional[Path]
    listen: Optional[str]
    interval: float
    on_error: Callable[[str], None]
    labels: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.names = [name for name in RUN_LABELS if name in self.labels]
        self.values = [self.labels[name] for name in self.names]
        # Without describe and auto_describe, an unchecked collector: the families are made at collection.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        self._server: Any = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failed = False

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.snapshot()
        for name, kind, text in FAMILIES:
            own = [OWN_LABELS[name]] if name in OWN_LABELS else []
            made = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"kata_events_{name}", text, labels=[*self.names, *own]
            )
            value = getattr(s, name)
            samples = [([k], n) for k, n in sorted(value.items())] if own else [([], float(value or 0))]
            for labels, number in samples:
                made.add_metric([*self.values, *labels], number)
            yield made

    def start(self) -> None:
        """Serve /metrics (raises OSError when the address cannot be bound); write the file."""
        if self.listen:
            from prometheus_client import start_http_server

            from kata_events.options import parse_listen

            host, port = parse_listen(self.listen)
            started = start_http_server(port, addr=host, registry=self.registry)
            self._server = started[0] if isinstance(started, tuple) else None
        if self.file is not None:
            self.write()

            def tick() -> None:
                while not self._stop.wait(self.interval):
                    self.write()

            self._thread = threading.Thread(target=tick, name="metrics", daemon=True)
            self._thread.start()

    def write(self) -> None:
        """Replace the metrics file; a failure is reported once until a write works again."""
        if self.file is None:
            return
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(str(self.file), self.registry)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                self.on_error(f"cannot write the metrics file {self.file}: {exc.strerror or exc}")
            self._failed = True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self.write()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
