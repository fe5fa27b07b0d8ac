"""`kata-events init` writes the --url it was given as a TOML string that reads back unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

from kata_events.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9/3.10
    import tomli as tomllib


def test_a_quote_or_backslash_in_the_url_keeps_the_config_file_valid(tmp_path: Path) -> None:
    odd = 'https://cn"x\\y'
    assert main(["init", "--dir", str(tmp_path), "--url", odd, "--url", "https://cn.example.local"]) == 0
    with open(tmp_path / "config.toml", "rb") as fh:
        config = tomllib.load(fh)
    assert config["url"] == [odd, "https://cn.example.local"]
