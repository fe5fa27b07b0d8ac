"""Runner.request_stop from another thread: the main thread is woken once, never after the stop."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import List

import pytest

from kata_events.delivery.policies import Delivery, LineWriter
from kata_events.runner import Runner, StopRequested


def _runner(wakes: List[str]) -> Runner:
    read_end, write_end = os.pipe()
    os.close(read_end)
    delivery = Delivery(LineWriter(write_end), commit=lambda point: None)
    runner = Runner(client=SimpleNamespace(), store=SimpleNamespace(), delivery=delivery)  # type: ignore[arg-type]
    runner.wake_main = lambda: wakes.append("wake")
    return runner


def _from_another_thread(runner: Runner, reason: str) -> None:
    thread = threading.Thread(target=runner.request_stop, args=(reason,))
    thread.start()
    thread.join()


def test_a_stop_asked_from_another_thread_wakes_the_main_thread_once() -> None:
    wakes: List[str] = []
    runner = _runner(wakes)
    _from_another_thread(runner, "STOP")
    _from_another_thread(runner, "end of stdin")
    assert wakes == ["wake"]
    assert runner.stopping


def test_no_wake_once_the_main_thread_is_stopping_already() -> None:
    # After run() the signal handlers are restored: a SIGUSR1 sent then would kill the process.
    wakes: List[str] = []
    runner = _runner(wakes)
    runner.request_stop("SIGTERM")
    _from_another_thread(runner, "STOP")
    assert wakes == []


def test_a_stop_inside_an_interruptible_section_unwinds_it() -> None:
    runner = _runner([])
    with pytest.raises(StopRequested), runner.interruptible():
        runner.request_stop("SIGTERM")  # what the signal handler does in the main thread
        raise AssertionError("not reached")
    runner.request_stop("SIGINT")  # outside a section: recorded only, nothing raised


def test_a_section_entered_after_the_stop_is_not_entered() -> None:
    runner = _runner([])
    runner.request_stop("SIGTERM")
    entered = False
    with pytest.raises(StopRequested), runner.interruptible():
        entered = True
    assert not entered
    runner.request_stop("SIGINT")  # the section left nothing interruptible behind
