"""Loading and checking the ``run`` configuration: flags, environment, TOML file, defaults.

Precedence: flag > environment (``KATA_EVENTS_*``) > config file > default. The merged values are
validated with jsonschema against the schema `kata_events.options` publishes, and every problem
found is reported at once in one `UserError` (exit 78), each naming the key, the value, where it came from
and what is allowed. Then defaults are computed, URLs and the pin normalized, and the files the
user named are checked (exit 66) before any network traffic. Reading the sources and the paths:
`sources`; the addresses: `urls`.

This package never logs, never touches the network and never writes a file.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import re
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from kata_events import options as opts
from kata_events.config.sources import (
    DEFAULT_ORIGIN,
    Origin,
    check_readable,
    config_path,
    convert,
    read_toml,
    resolve_path,
)
from kata_events.config.urls import node_name_of, normalize_fingerprint, normalize_url, without_credentials
from kata_events.exits import ExitStatus, UserError
from kata_events.paths import default_state_path

#: An option's attribute type by its type; for the others a string. None where there is no value.
_FIELD_TYPES = {"int": int, "float": float, "bool": bool, "list": Tuple[str, ...], "path": Optional[Path]}

#: The effective ``run`` configuration: one attribute per option in `kata_events.options`, in its
#: order, then the config file and ``sources`` (where each value came from). ``url`` holds normalized
#: base addresses (``https://host[:port]``, no path); paths are absolute; ``pin_sha256`` is lowercase
#: hex without colons; ``key_password`` a `kata_events.key_password.Secret`, printed ``<redacted>``.
Config = make_dataclass(
    "Config",
    [(o.name, _FIELD_TYPES.get(o.type, Optional[str])) for o in opts.OPTIONS]
    + [
        ("config_file", Optional[Path], None),
        ("sources", Mapping[str, str], field(default_factory=dict, compare=False, hash=False, repr=False)),
    ],
    frozen=True,
    namespace={"__module__": __name__},
)


def load_run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Resolve the ``run`` configuration from parsed flags, the environment and the config file.
    Raises `UserError`: exit 66 for a missing or unreadable file, else 78 with every problem."""
    config_file = config_path(args, environ)
    values: Dict[str, Tuple[Any, Origin]] = {
        o.name: (o.default, DEFAULT_ORIGIN) for o in opts.OPTIONS if o.default is not None
    }
    problems: List[str] = []

    if config_file is not None:
        origin = Origin(f"config file {config_file}", config_file.parent)
        for key, value in read_toml(config_file).items():
            option = opts.BY_NAME.get(key)
            if option is not None and option.env_only:
                problems.append(
                    f"{key} cannot be set in {origin.label}: it is read from the variable "
                    f"{option.env} only; or name a file holding it with key_password_file"
                )
                continue
            if option is not None and isinstance(value, str) and option.type in ("list", "choice"):
                value = [value] if option.type == "list" else value.lower()
            values[key] = (value, origin)  # an unknown key too: the schema reports it

    for name, raw in sorted(environ.items()):
        if not name.startswith(opts.ENV_PREFIX) or name == opts.CONFIG_ENV:
            continue
        option = opts.BY_ENV.get(name)
        if option is None:
            problems.append(f"unknown environment variable {name}{_suggest(name)}")
        elif raw.strip():
            values[option.name] = (convert(option, raw), Origin(f"environment variable {name}"))

    for option in opts.OPTIONS:
        given = getattr(args, option.name, None)
        if isinstance(given, str):
            given = convert(option, given)
        if given is not None:
            values[option.name] = (given, Origin(option.flag))

    urls, url_problems = _urls(values)
    unknown, invalid, missing = schema_problems(values)
    if "url" in invalid:  # the schema's message says it all
        urls, url_problems = (), []
    # url comes first in OPTIONS, so its problems lead the per-key ones.
    problems = unknown + problems + url_problems + list(invalid.values()) + missing
    if problems:
        several = f" ({len(problems)} problems):\n" + "\n".join(f"  - {p}" for p in problems)
        listed = several if len(problems) > 1 else f": {problems[0]}"
        raise UserError(f"invalid configuration{listed}", ExitStatus.CONFIG, problems)

    resolved: Dict[str, Any] = dict.fromkeys(opts.BY_NAME)
    resolved.update({name: value for name, (value, _) in values.items()}, url=urls)
    if resolved["pin_sha256"] is not None:
        resolved["pin_sha256"] = normalize_fingerprint(resolved["pin_sha256"])
    for option in opts.OPTIONS:
        if option.type == "path" and option.name in values:
            resolved[option.name] = resolve_path(*values[option.name], environ)
    resolved["settle_time"] = float(resolved["settle_time"])
    if not resolved["name"]:
        resolved["name"] = node_name_of(urls[0])
        values["name"] = (None, Origin("the host of the first url"))
    if resolved["max_unacked"] is None:
        resolved["max_unacked"] = resolved["max_events"]
    if resolved["state_file"] is None:
        resolved["state_file"] = default_state_path(resolved["external_system_id"], environ)
        values["state_file"] = (None, DEFAULT_ORIGIN)
    if resolved["key_password"] is not None:
        from kata_events.key_password import Secret

        resolved["key_password"] = Secret(resolved["key_password"])

    check_readable({name: resolved[name] for name in ("cert", "key", "key_password_file", "ca_file")})
    sources = {name: origin.label for name, (_, origin) in values.items()}
    return Config(config_file=config_file, sources=sources, **resolved)


def early_values(
    args: argparse.Namespace, environ: Mapping[str, str], name: str, strict: bool = False
) -> List[Tuple[Any, Origin]]:
    """``name``'s values from the flag, the variable and the config file, each with its origin, in
    precedence order, empty ones left out: for what is needed before or without resolving the
    configuration. A config file that cannot be read gives none, or raises `UserError` if ``strict``."""
    option = opts.BY_NAME[name]
    found: List[Tuple[Any, Origin]] = []
    given = getattr(args, name, None)
    if given:
        found.append((given, Origin(option.flag)))
    from_env = environ.get(option.env, "").strip()
    if from_env:
        found.append((convert(option, from_env), Origin(f"environment variable {option.env}")))
    try:
        path = config_path(args, environ)
        from_file = None if path is None else read_toml(path).get(name)
    except UserError:
        if strict:
            raise
        from_file = None
    if from_file is not None and path is not None:
        value = [from_file] if option.type == "list" and isinstance(from_file, str) else from_file
        found.append((value, Origin(f"config file {path}", path.parent)))
    return found


def requested_log_format(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The log format asked for by flag, variable or config file, for errors before the
    configuration is resolved: the first valid one in precedence order, else the default."""
    option = opts.BY_NAME["log_format"]
    for value, _ in early_values(args, environ, "log_format"):
        if isinstance(value, str) and value.strip().lower() in option.choices:
            return value.strip().lower()
    return str(option.default)


def requested_name(args: argparse.Namespace, environ: Mapping[str, str]) -> Optional[str]:
    """The node name as far as it can be told before the configuration is resolved (for a
    ``fatal`` line): ``name`` from the flag, variable or file, else the first url's host; None when
    neither is readable."""
    for value, _ in early_values(args, environ, "name"):
        if isinstance(value, str) and re.match(opts.NAME_PATTERN, value.strip()):
            return value.strip()
    for urls, _ in early_values(args, environ, "url"):
        if isinstance(urls, list) and urls and isinstance(urls[0], str) and "://" in urls[0]:
            return node_name_of(urls[0])
    return None


def describe(config: Config) -> Dict[str, Any]:
    """The effective configuration as JSON-ready values, for the ``config`` log event; secrets
    redacted, ``sources`` without the defaults. ``name`` is left out: every log line of the run
    carries it as its ``node`` field (and a log record's own ``name`` is the logger's)."""
    shown = {o.name: getattr(config, o.name) for o in opts.OPTIONS if o.name != "name"}
    if config.proxy is not None:
        shown["proxy"] = without_credentials(config.proxy)
    shown["config_file"] = config.config_file
    shown["sources"] = {k: v for k, v in config.sources.items() if v != DEFAULT_ORIGIN.label}
    # Paths become strings, tuples lists, and a secret its str(): <redacted>.
    return json.loads(json.dumps(shown, default=str))


# -- checks ----------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@functools.cache
def _schema_validator() -> Any:
    """jsonschema's validator of the published schema, where an integral float (1.0) is no integer:
    what passes is what the code takes."""
    import jsonschema  # loaded by the commands that validate a configuration, not by --version

    base = jsonschema.Draft202012Validator
    integer = base.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
    )
    return jsonschema.validators.extend(base, type_checker=integer)(opts.json_schema())


def schema_problems(values: Mapping[str, Tuple[Any, Origin]]) -> Tuple[List[str], Dict[str, str], List[str]]:
    """The merged values checked against the published schema, in the user's words: the unknown
    keys, one message per invalid key in the order of `kata_events.options.OPTIONS`, the missing."""
    instance = {name: value for name, (value, _) in values.items()}
    errors = _schema_validator().iter_errors(instance)
    keys = {str(error.absolute_path[0]) for error in errors if error.absolute_path}
    unknown = [
        f"unknown key {key!r} in {values[key][1].label}{_suggest(key)}"
        for key in instance
        if key not in opts.BY_NAME
    ]
    missing = [
        f"{o.name} is required: give {o.flag}, set {o.env}, or put {o.name} = ... in the config file"
        for o in opts.OPTIONS
        if o.required and o.name not in instance
    ]
    invalid = {
        o.name: f"{o.name} = {'<redacted>' if o.env_only else _shown(values[o.name][0])} "
        f"(from {values[o.name][1].label}): expected " + o.allowed_text
        for o in opts.OPTIONS
        if o.name in keys
    }
    return unknown, invalid, missing


def _urls(values: Dict[str, Tuple[Any, Origin]]) -> Tuple[Tuple[str, ...], List[str]]:
    """The url values normalized (in order, once each) and their problems. A pasted events URL
    names the external system id: when the id is not given, it is taken from there."""
    urls, origin = values.get("url", ([], DEFAULT_ORIGIN))
    given_id = values.get("external_system_id", (None, None))[0]
    bases: Dict[str, None] = {}  # in order, once each
    problems: List[str] = []
    ids: Dict[str, str] = {}  # lowercase id -> the url naming it
    found = set()
    for url in urls if isinstance(urls, list) else []:
        if not isinstance(url, str):
            continue  # the schema reports it
        try:
            base, found_id = normalize_url(url)
        except ValueError as exc:
            problems.append(f"url = {_shown(url)} (from {origin.label}): {exc}")
            continue
        if found_id is not None:
            ids[found_id.lower()] = url
            found.add(found_id)
        bases[base] = None
    if "external_system_id" not in values and len(found) == 1:
        values["external_system_id"] = (found.pop(), Origin(f"the url ({origin.label})"))
    if len(ids) > 1:
        problems.append(
            f"url (from {origin.label}): the URLs name different external system ids: " + ", ".join(ids)
        )
    elif ids and isinstance(given_id, str) and given_id.lower() not in ids:
        id_origin = values["external_system_id"][1]
        problems.append(
            f"external_system_id = {_shown(given_id)} (from {id_origin.label}) differs from the id "
            f"{next(iter(ids))} in url {_shown(next(iter(ids.values())))} (from {origin.label}): "
            "make them match, or give the base address only"
        )
    return tuple(bases), problems


def _suggest(word: str) -> str:
    # A variable is compared after the shared prefix, which would make every name look close.
    env = word.upper().startswith(opts.ENV_PREFIX)
    key, known = (
        (word[len(opts.ENV_PREFIX) :].lower(), [*opts.BY_NAME, "config"]) if env else (word, opts.BY_NAME)
    )
    close = difflib.get_close_matches(key.replace("-", "_"), list(known), n=1, cutoff=0.6)
    if not close:
        return ": see `kata-events run --help` for the known ones"
    return f": did you mean {opts.ENV_PREFIX + close[0].upper() if env else close[0]}?"
