"""`kata-events init` makes a usable integration; the documentation's generated tables match the code,
the README stays short and every link between the README and docs/ resolves."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from kata_events import logs
from kata_events.certs import sha256_fingerprint
from kata_events.cli import build_parser
from kata_events.config import load_run_config

ROOT = Path(__file__).resolve().parent.parent


def _init(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kata_events", "init", "--dir", str(tmp_path / "kata"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_init_writes_key_certificate_and_a_config_that_loads(tmp_path: Path) -> None:
    done = _init(tmp_path, "--url", "https://cn.example.local:443")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", "init must keep stdout free"
    kata = tmp_path / "kata"
    for name in ("client.crt", "client.key", "config.toml"):
        assert stat.S_IMODE((kata / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(kata.stat().st_mode) == 0o700
    fingerprint = sha256_fingerprint((kata / "client.crt").read_bytes())
    shown = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    assert shown in done.stderr, "the fingerprint to check at approval time is printed"
    args = build_parser().parse_args(["run", "--config", str(kata / "config.toml")])
    config = load_run_config(args, {"HOME": os.environ.get("HOME", "/root")})
    assert config.url == ("https://cn.example.local",)
    assert config.external_system_id in done.stderr
    assert config.cert == kata / "client.crt" and config.key == kata / "client.key"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    before = (tmp_path / "kata" / "client.key").read_bytes()
    again = _init(tmp_path)
    assert again.returncode == 73
    assert "already exist" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "kata" / "client.key").read_bytes() == before
    assert _init(tmp_path, "--force").returncode == 0
    assert (tmp_path / "kata" / "client.key").read_bytes() != before


def test_documented_troubleshooting_table_matches_the_log_event_catalogue() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- events:begin -->\n(.*?)\n<!-- events:end -->", text, re.S)
    assert match, "docs/operations.md lacks the events markers"
    assert match.group(1).strip() == logs.troubleshooting_table().strip(), (
        "docs/operations.md's troubleshooting table is out of date: paste "
        "logs.troubleshooting_table() between the markers"
    )


def test_readme_names_the_two_commands_that_ci_runs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
        " && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/python -m pytest"
    )
    assert test_command in text and test_command in ci
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kata-events demo" in text


def test_readme_stays_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < 15_000, f"README.md is {size} bytes: move reference material into docs/"


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set:
    """The #anchors GitHub gives a page's headings (code blocks skipped, duplicates numbered)."""
    found: set = set()
    seen: dict = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.*)", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    pages = [ROOT / "README.md", ROOT / "README.ru.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1, "docs/ holds no pages"
    broken = []
    checked = 0
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        fenced = False
        for index, line in enumerate(lines):
            if line.startswith("```"):
                fenced = not fenced
                lines[index] = ""
            elif fenced:
                lines[index] = ""  # code blocks hold no links
        text = "\n".join(lines)
        for link in _LINK.finditer(text):  # link text may wrap onto the next line
            target = link.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: and the like
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            number = text.count("\n", 0, link.start(1)) + 1
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading in {dest.name})")
    assert checked > 0, "no relative links found"
    assert not broken, "broken links:\n" + "\n".join(broken)
