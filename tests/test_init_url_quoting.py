"""`kata-events init` writes the addresses it was given as TOML strings that read back unchanged,
and refuses one that is not an address before writing anything."""

from __future__ import annotations

import sys
from pathlib import Path

from kata_events.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9/3.10
    import tomli as tomllib


def test_addresses_round_trip_through_the_config_file(tmp_path: Path) -> None:
    urls = ["https://[fd00::5]:8443", "https://цн.пример.рф", "https://cn.example.local"]
    args = ["init", "--dir", str(tmp_path)]
    for url in urls:
        args += ["--url", url]
    assert main(args) == 0
    with open(tmp_path / "config.toml", "rb") as fh:
        config = tomllib.load(fh)
    assert config["url"] == urls


def test_a_quote_or_backslash_in_the_host_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    assert main(["init", "--dir", str(tmp_path / "kata"), "--url", 'https://cn"x\\y']) == 64
    assert not (tmp_path / "kata").exists()
