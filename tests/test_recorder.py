"""The recorder's commit line: what was saved, and the delivery position it stands for."""

from __future__ import annotations

import io
import json
from typing import List

from kata_events import logs
from kata_events.delivery.disk_faults import DiskHealth
from kata_events.delivery.recorder import Recorder
from kata_events.state.progress import Point


def test_the_commit_line_carries_the_taken_position_of_the_point() -> None:
    out = io.StringIO()
    logs.setup_logging("debug", "json", stream=out)
    committed: List[Point] = []
    recorder = Recorder(committed.append, None, DiskHealth())
    try:
        recorder.offer(Point("token-1"), lines=40, position=5120)
        recorder.flush()
    finally:
        recorder.close()
    assert committed == [Point("token-1")]
    (line,) = [json.loads(text) for text in out.getvalue().splitlines() if '"commit"' in text]
    assert (line["event"], line["position"], line["pages"]) == ("commit", 5120, 1), line
