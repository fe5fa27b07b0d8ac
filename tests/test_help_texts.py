"""What each command's --help says: only the options it uses, where a --config file can give them,
the accepted ranges; checked against the option list and the commands' own behaviour."""

from __future__ import annotations

import re
import subprocess
from typing import Any, List

import pytest

from kata_events import options as opts
from run_helpers import clean_env, installed_command

pytestmark = pytest.mark.timeout(60)


def _help(*words: str) -> str:
    done: Any = subprocess.run(
        [str(installed_command()), *words, "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flags(text: str) -> List[str]:
    """The long flags a help text offers (usage and option list)."""
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)))


def test_check_help_lists_exactly_the_options_check_uses() -> None:
    text = _help("check")
    # argparse heads the list "options:" (Python 3.10 and later) or "optional arguments:" (3.9).
    description, listed = re.split(r"\n(?:options|optional arguments):", text, maxsplit=1)
    offered = _flags(description.split("\n\n", 1)[0] + listed)
    used = {"--help", "--config"} | {o.flag for o in opts.OPTIONS if not o.run_only and not o.env_only}
    for flag in (
        "--metrics-file",
        "--metrics-listen",
        "--once",
        "--settle-time",
        "--max-events",
        "--max-timeout",
        "--log-format",
    ):
        assert flag not in offered, f"check --help lists {flag}, which check ignores:\n{text}"
    assert set(offered) - {"--no-insecure"} == used, text
    assert "run's other keys are accepted" in re.sub(r"\s+", " ", listed)


@pytest.mark.parametrize(
    "words, from_file",
    [
        (("run",), "any of the options below"),
        (("check",), "the options below as keys"),
        (("status",), "only name, url, state_file and external_system_id are read"),
        (("state",), "only state_file and external_system_id are read"),
        (("state", "show"), "only state_file and external_system_id are read"),
        (("state", "reset"), "only state_file and external_system_id are read"),
    ],
)
def test_each_commands_help_says_what_its_config_file_gives(words: Any, from_file: str) -> None:
    text = re.sub(r"\s+", " ", _help(*words))
    assert "--config FILE" in text
    assert from_file in text, text


@pytest.mark.parametrize("command", ["status", "state"])
def test_status_and_state_do_not_call_the_external_system_id_required(command: str) -> None:
    text = re.sub(r"\s+", " ", _help(command))
    assert "Required" not in text, text
    assert "one of --config, --state-file or --external-system-id is needed" in text


def test_state_reset_help_is_about_reset() -> None:
    reset = _help("state", "reset")
    assert reset.startswith("usage: kata-events state reset"), reset
    assert "reset: move the state file" in reset and "show:" not in reset
    assert "--format" not in reset
    show = _help("state", "show")
    assert "show:  print" in show and "reset:" not in show and "--format" in show
    both = _help("state")
    assert "show:" in both and "reset:" in both


@pytest.mark.parametrize("option", [o for o in opts.OPTIONS if o.type in ("int", "float") and o.maximum])
def test_run_help_gives_each_numbers_range(option: opts.Option) -> None:
    text = re.sub(r"\s+", " ", _help("run"))
    assert f"From {option.minimum:g} to {option.maximum:g}." in text, option.name
    if option.name == "max_events":
        assert "From 1 to 72000." in text
