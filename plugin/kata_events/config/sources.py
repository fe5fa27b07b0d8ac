"""Where configuration values come from: the TOML file, strings from flags and variables, paths.

`Origin` says where a value came from (for messages, and the directory a relative path in a config
file is relative to). Reading the config file and the files the user named is all the I/O here;
never writes a file.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from kata_events import options as opts
from kata_events.exits import ExitStatus, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

_BOOLS = dict.fromkeys(("true", "1", "yes", "on"), True) | dict.fromkeys(("false", "0", "no", "off"), False)


@dataclass(frozen=True)
class Origin:
    """Where a value came from: for messages, and for resolving relative paths."""

    label: str
    base_dir: Optional[Path] = None


DEFAULT_ORIGIN = Origin("the default")


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Optional[Path]:
    given = getattr(args, "config", None) or environ.get(opts.CONFIG_ENV)
    return Path(os.path.abspath(_expand_user(str(given), environ))) if given else None


def read_toml(path: Path) -> Dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {_reason(exc)}", ExitStatus.NO_INPUT) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(
            f"config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8", ExitStatus.CONFIG
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        raise UserError(f"config file {path} is not valid TOML: {exc}", ExitStatus.CONFIG) from None


def convert(option: opts.Option, raw: str) -> Any:
    """A string from a flag or a variable → the option's type; left as is when it does not parse,
    so that validation reports it with the rest."""
    text = raw.strip()
    if option.type in ("int", "float"):
        try:
            value = int(text, 10) if option.type == "int" else float(text)
        except ValueError:
            return raw
        return raw if isinstance(value, float) and not math.isfinite(value) else value
    if option.type == "bool":
        return _BOOLS.get(text.lower(), raw)
    if option.type == "list":
        return [part for part in re.split(r"[,\s]+", text) if part]
    if option.type == "choice":
        return text.lower()
    return text if option.type == "path" or option.pattern else raw


def _expand_user(path: str, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME")
    if home and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return os.path.expanduser(path)


def resolve_path(value: str, origin: Origin, environ: Mapping[str, str]) -> Path:
    expanded = _expand_user(value, environ)
    if origin.base_dir is not None and not os.path.isabs(expanded):
        expanded = os.path.join(origin.base_dir, expanded)
    return Path(os.path.abspath(expanded))


def _reason(exc: OSError) -> str:
    reasons = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "a parent is not a directory",
    }
    return reasons.get(exc.errno or 0, (exc.strerror or str(exc)).lower())


def check_readable(files: Mapping[str, Optional[Path]]) -> None:
    """Raise `UserError` (exit 66) naming each of ``files`` (those not None) that cannot be read."""
    problems = []
    for name, path in [(name, path) for name, path in files.items() if path is not None]:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            problems.append(f"{name} file {path}: {_reason(exc)}")
    if problems:
        listed = f" {problems[0]}" if len(problems) == 1 else ":\n" + "\n".join(f"  - {p}" for p in problems)
        raise UserError(f"cannot read{listed}", ExitStatus.NO_INPUT, problems)
