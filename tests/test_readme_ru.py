"""README.ru.md, the first hour in Russian: the README's own commands, none more and none fewer.

A command is a line of a ```sh block, its trailing ``# comment`` left out (the Russian page
comments in Russian). Whenever the README's commands change, this test says which one the other
page lacks. The Russian page names the web-interface section as the Russian interface shows it,
and the README links it at the top.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
README, README_RU = ROOT / "README.md", ROOT / "README.ru.md"


def commands(page: Path) -> List[str]:
    """The command lines of ``page``'s ```sh blocks, in order, comments and extra spaces removed."""
    found = []
    for block in re.findall(r"^ *```sh\n(.*?)^ *```", page.read_text(encoding="utf-8"), re.M | re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                found.append(" ".join(line.split()))
    return found


def test_the_russian_page_has_exactly_the_readmes_commands() -> None:
    english, russian = commands(README), commands(README_RU)
    assert len(english) >= 8, english  # demo, tests, install, init, check, Vector, status
    missing_in_russian = [c for c in english if c not in russian]
    missing_in_english = [c for c in russian if c not in english]
    assert not missing_in_russian, f"README.ru.md lacks the README's commands: {missing_in_russian}"
    assert not missing_in_english, f"README.ru.md has commands the README does not: {missing_in_english}"


def test_the_first_hour_is_all_there_in_russian() -> None:
    text = README_RU.read_text(encoding="utf-8")
    for needed in (
        "«Внешние системы»",  # the section's name as the Russian web interface shows it
        "kata-events init",
        "pin_sha256",
        "kata-events check",
        "kata-events status",
        "vector --config",
        "docs/siem.md",
    ):
        assert needed in text, needed
    # In that order: init, trust, approval, check, a shipper, status.
    steps = [
        text.index(s)
        for s in (
            "kata-events init --dir",
            "pin_sha256 = ",
            "«Внешние системы»",
            "vector --config",
            "status --config",
        )
    ]
    assert steps == sorted(steps)
    assert len(re.findall(r"[А-Яа-яЁё]", text)) > 2000, "the page is not in Russian"


def test_the_readme_links_the_russian_page_at_the_top() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:5]
    assert any("(README.ru.md)" in line for line in head), head
