"""Where a run keeps its files, for the commands that only read or move them (`status`, `state`).

The state file is resolved as ``run`` does (flag > ``KATA_EVENTS_*`` variable > config file > the
default named after the external system id), without asking for the certificate, the key or the
URL; the files next to it are named here too. This module never writes, never logs and never
touches the network.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Mapping, Tuple

from kata_events import options as opts
from kata_events.config import DEFAULT_ORIGIN, Config, Origin, early_values, resolve_path
from kata_events.exits import ExitStatus, UserError
from kata_events.paths import RunFiles, default_state_path

if TYPE_CHECKING:
    from kata_events.state.store import TokenStore


def add_location_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """``--config``, ``--state-file`` and ``--external-system-id``, with ``run``'s help texts;
    ``several`` (``status``): ``--config`` is repeatable (a list) and may name a directory."""
    text = (
        "The TOML file of the run (only name, url, state_file and external_system_id are read from it; "
        "the lag thresholds and --format are flags only). Repeatable, one per node: each is evaluated "
        "and one line sums them up. A directory stands for every DIR/<node>/config.toml and DIR/*.toml "
        "in it."
        if several
        else "The TOML file of the run (only state_file and external_system_id are read from it; the "
        "other options here are flags only)."
    )
    parser.add_argument(
        opts.CONFIG_FLAG,
        dest="config",
        metavar="FILE|DIR" if several else "FILE",
        action="append" if several else "store",
        help=f"{text} Env: {opts.CONFIG_ENV}.",
    )
    for name in ("state_file", "external_system_id"):
        option = opts.BY_NAME[name]
        parser.add_argument(
            option.flag,
            dest=name,
            metavar=option.metavar_text,
            help=f"{option.help} Or from --config; one of --config, --state-file or "
            f"--external-system-id is needed. Env: {option.env}.".replace("%", "%%"),
        )


def token_store(config: Config) -> TokenStore:
    from kata_events.state.store import TokenStore

    return TokenStore(
        config.state_file,
        url=config.url[0],
        external_system_id=config.external_system_id,
        filter=config.filter,
    )


def locate(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> RunFiles:
    """The run's files from the flags, the environment and the config file (`UserError` 66 for a
    config file that cannot be read)."""

    def given(name: str) -> Tuple[str, Origin]:
        values = early_values(args, environ, name, strict=True)
        return next(((v, o) for v, o in values if isinstance(v, str) and v), ("", DEFAULT_ORIGIN))

    state_file, origin = given("state_file")
    if state_file:
        return RunFiles(resolve_path(state_file, origin, environ))
    ext_id = given("external_system_id")[0]
    if ext_id:
        return RunFiles(default_state_path(ext_id, environ))
    raise UserError(
        "which run? give --config FILE (the run's config file), or --state-file FILE, or "
        "--external-system-id UUID (the state file is then the run's default one)",
        ExitStatus.CONFIG,
    )
