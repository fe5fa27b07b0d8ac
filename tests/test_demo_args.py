"""`kata-events demo` refuses bad numbers with a usage error before starting anything."""

from __future__ import annotations

import pytest

from kata_events.cli import main
from kata_events.exits import ExitStatus


@pytest.mark.parametrize(
    "argv",
    [["--events", "-1"], ["--rate", "-1"], ["--rate", "nan"], ["--rate", "inf"], ["--backlog", "-3"]],
)
def test_bad_demo_numbers_are_usage_errors(argv: list, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", *argv]) == ExitStatus.USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kata-events: --")
