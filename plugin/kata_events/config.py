"""Loading and checking the ``run`` configuration: flags, environment, TOML file, defaults.

Precedence: flag > environment (``KATA_EVENTS_*``) > config file > default. The merged values are
validated with jsonschema against the schema `kata_events.options` publishes, and every problem
found is reported at once in one `UserError` (exit 78), each naming the key, the value, where it came from
and what is allowed. Then defaults are computed, URLs and the pin normalized, and the files the
user named are checked (exit 66) before any network traffic.

This module never logs, never touches the network and never writes a file.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from kata_events import options as opts
from kata_events.exits import ExitStatus, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

#: The path of the Events API under a Central Node's base address.
API_PATH_PREFIX = "/kata/events_api/v1"
_EVENTS_PATH = re.compile(r"^/kata/events_api/v1(?:/(?P<id>[^/]+))?(?:/events)?/*$", re.IGNORECASE)

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class Config:
    """The effective ``run`` configuration: one attribute per option in `kata_events.options`.

    ``url`` holds normalized base addresses (``https://host[:port]``, no path); paths are absolute;
    ``pin_sha256`` is lowercase hex without colons. ``sources`` says where each value came from.
    """

    url: Tuple[str, ...]
    external_system_id: str
    name: str
    cert: Path
    key: Path
    key_password_file: Optional[Path]
    #: Shown as ``<redacted>`` wherever it is printed (a `kata_events.key_password.Secret`).
    key_password: Optional[Any]
    ca_file: Optional[Path]
    pin_sha256: Optional[str]
    insecure: bool
    proxy: Optional[str]
    filter: str
    max_events: int
    max_timeout: int
    state_file: Path
    ack: str
    settle_time: float
    settle_lines: int
    max_unacked: int
    ack_timeout: int
    log_level: str
    log_format: str
    stats_interval: int
    lag_warning: int
    warn_line_bytes: int
    max_event_bytes: int
    metrics_file: Optional[Path]
    metrics_listen: Optional[str]
    once: bool
    config_file: Optional[Path] = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Origin:
    """Where a value came from: for messages, and for resolving relative paths."""

    kind: str  # "flag", "env", "file", "default", "url"
    label: str
    base_dir: Optional[Path] = None


DEFAULT_ORIGIN = Origin("default", "the default")


def load_run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Resolve the ``run`` configuration from parsed flags, the environment and the config file.

    Raises `UserError`: exit 66 when the config file or a certificate, key or CA file is missing or
    unreadable; exit 78 for anything else, listing every problem at once.
    """
    config_file = config_path(args, environ)
    values: Dict[str, Tuple[Any, Origin]] = {
        o.name: (o.default, DEFAULT_ORIGIN) for o in opts.OPTIONS if o.default is not None
    }
    problems: List[str] = []

    if config_file is not None:
        origin = Origin("file", f"config file {config_file}", config_file.parent)
        for key, value in read_toml(config_file).items():
            option = opts.BY_NAME.get(key)
            if option is not None and option.type == "list" and isinstance(value, str):
                value = [value]
            elif option is not None and option.type == "choice" and isinstance(value, str):
                value = value.lower()
            if option is not None and option.env_only:
                problems.append(
                    f"{key} cannot be set in {origin.label}: it is read from the variable "
                    f"{option.env} only; or name a file holding it with key_password_file"
                )
                continue
            values[key] = (value, origin)  # an unknown key too: the schema reports it

    for name, raw in sorted(environ.items()):
        if not name.startswith(opts.ENV_PREFIX) or name == opts.CONFIG_ENV:
            continue
        option = opts.BY_ENV.get(name)
        if option is None:
            problems.append(f"unknown environment variable {name}{_suggest(name, opts.KNOWN_ENV)}")
            continue
        if raw.strip() == "":
            continue
        values[option.name] = (_convert(option, raw), Origin("env", f"environment variable {name}"))

    for option in opts.OPTIONS:
        given = getattr(args, option.name, None)
        if given is None:
            continue
        if isinstance(given, str):
            given = _convert(option, given)
        values[option.name] = (given, Origin("flag", option.flag))

    _take_id_from_url(values)
    unknown, invalid, missing = schema_problems(values)
    problems = unknown + problems
    urls: Tuple[str, ...] = ()
    if "url" in values and "url" not in invalid:
        # url comes first in OPTIONS, so its problems lead the per-key ones.
        urls, url_problems = _normalize_urls(values)
        problems += url_problems
    problems += invalid.values()
    problems += missing
    if problems:
        raise _config_error(problems)

    resolved: Dict[str, Any] = {name: value for name, (value, _) in values.items()}
    resolved["url"] = urls
    if resolved.get("pin_sha256") is not None:
        resolved["pin_sha256"] = normalize_pin(resolved["pin_sha256"])
    for option in opts.OPTIONS:
        if option.type == "path" and option.name in values:
            value, origin = values[option.name]
            resolved[option.name] = resolve_path(value, origin, environ)
    resolved["settle_time"] = float(resolved["settle_time"])
    if not resolved.get("name"):
        resolved["name"] = node_name_of(urls[0])
        values["name"] = (None, Origin("url", "the host of the first url"))
    if "max_unacked" not in resolved:
        resolved["max_unacked"] = resolved["max_events"]
    if "state_file" not in resolved:
        from kata_events.paths import default_state_path

        resolved["state_file"] = Path(
            os.path.abspath(default_state_path(resolved["external_system_id"], environ))
        )
        values["state_file"] = (None, DEFAULT_ORIGIN)
    for option in opts.OPTIONS:
        resolved.setdefault(option.name, None)
        if option.secret and resolved[option.name] is not None:
            from kata_events.key_password import Secret

            resolved[option.name] = Secret(resolved[option.name])

    _check_readable(
        [
            (name, resolved[name])
            for name in ("cert", "key", "key_password_file", "ca_file")
            if resolved[name] is not None
        ]
    )
    sources = {name: origin.label for name, (_, origin) in values.items()}
    return Config(config_file=config_file, sources=sources, **resolved)


def requested_log_format(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The log format asked for by flag, variable or config file, for errors before the
    configuration is resolved: the first valid one in precedence order, else the default."""
    option = opts.BY_NAME["log_format"]
    candidates = [getattr(args, "log_format", None), environ.get(option.env)]
    try:
        path = config_path(args, environ)
        if path is not None:
            candidates.append(read_toml(path).get("log_format"))
    except (UserError, OSError):
        pass
    for value in candidates:
        if isinstance(value, str) and value.strip().lower() in option.choices:
            return value.strip().lower()
    return str(option.default)


def node_name_of(url: str) -> str:
    """The default ``name`` of a run: the host of its (first) url, lowercase, without the port.

    ``https://CN.example.local:8443`` → ``cn.example.local``; ``https://10.0.0.5`` → ``10.0.0.5``;
    an IPv6 literal ``https://[fd00::5]`` → ``fd00--5`` (a name is a label and a file name: no
    colons). Anything that does not parse gives ``kata-events``.
    """
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        host = ""
    name = re.sub(r"[^a-z0-9._-]", "-", host).strip("-._")[:63]
    return name or "kata-events"


def requested_name(args: argparse.Namespace, environ: Mapping[str, str]) -> Optional[str]:
    """The node name as far as it can be told before the configuration is resolved (for a
    ``fatal`` line): ``name`` from the flag, variable or file, else the first url's host; None when
    neither is readable."""
    option = opts.BY_NAME["name"]
    file_values: Dict[str, Any] = {}
    try:
        path = config_path(args, environ)
        if path is not None:
            file_values = read_toml(path)
    except (UserError, OSError):
        pass
    for value in (getattr(args, "name", None), environ.get(option.env), file_values.get("name")):
        if isinstance(value, str) and re.match(opts.NAME_PATTERN, value.strip()):
            return value.strip()
    from_env = [u for u in re.split(r"[,\s]+", environ.get(opts.BY_NAME["url"].env, "")) if u]
    from_file = file_values.get("url")
    for urls in (
        getattr(args, "url", None),
        from_env,
        [from_file] if isinstance(from_file, str) else from_file,
    ):
        if isinstance(urls, list) and urls and isinstance(urls[0], str) and "://" in urls[0]:
            return node_name_of(urls[0])
    return None


def describe(config: Config) -> Dict[str, Any]:
    """The effective configuration as JSON-ready values, for the ``config`` log event.

    Secret options are redacted. ``sources`` maps each key that did not come from a default to where
    it came from (flag, environment variable, config file). ``name`` is left out: every log line of
    the run carries it as its ``node`` field (and a log record's own ``name`` is the logger's).
    """
    described: Dict[str, Any] = {}
    for option in opts.OPTIONS:
        if option.name == "name":
            continue
        value = getattr(config, option.name)
        if option.secret and value is not None:
            value = "<redacted>"
        elif option.name == "proxy" and value is not None:
            value = without_credentials(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        described[option.name] = value
    described["config_file"] = None if config.config_file is None else str(config.config_file)
    described["sources"] = {k: v for k, v in config.sources.items() if v != DEFAULT_ORIGIN.label}
    return described


def without_credentials(url: str) -> str:
    """``http://user:password@host:port`` → ``http://host:port``: a URL fit for a log line."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def normalize_pin(pin: str) -> str:
    """``AB:CD:...`` or ``abcd...`` → lowercase hex without colons."""
    return pin.replace(":", "").strip().lower()


#: A DNS name (internationalised ones too) or an IPv4 address; IPv6 literals come in brackets.
_HOST = re.compile(r"[\w-]+(\.[\w-]+)*\.?")


def normalize_url(url: str) -> Tuple[str, Optional[str]]:
    """A Central Node address → (``https://host[:port]``, external system id found in it or None).

    Accepts a base address (``https://cn.example.local``, ``https://10.0.0.5:443``) or a full
    events URL copied from the documentation; the scheme is required. Raises ValueError with a
    reason otherwise.
    """
    text = url.strip()
    if "://" not in text:
        raise ValueError(f"the scheme is missing: write https://{text} (https:// is required)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "http":
        raise ValueError("http:// is refused: the Events API needs mutual TLS, use https://")
    if scheme != "https":
        raise ValueError(f"the scheme must be https://, not {parts.scheme}://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("remove the user name/password: the Central Node authenticates by certificate")
    if parts.query or parts.fragment:
        raise ValueError("remove the ?query/#fragment: give max_events and filter as options")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("the host name is missing")
    if ":" not in host and not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IP address (letters, digits, '-' and '.' only)")
    found_id = None
    if parts.path.strip("/"):
        match = _EVENTS_PATH.match(parts.path)
        if match is None:
            raise ValueError(
                f"unexpected path {parts.path!r}: give the base address (https://host[:port]) or the "
                f"events URL {API_PATH_PREFIX}/<external_system_id>/events"
            )
        found_id = match.group("id")
        if found_id is not None and not re.match(opts.UUID_PATTERN, found_id):
            raise ValueError(f"{found_id!r} in the path is not a UUID")
    if ":" in host:
        host = f"[{host}]"
    # The default port is dropped so that equal addresses compare equal (the state file records it).
    base = f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"
    return base, found_id


# -- sources ---------------------------------------------------------------------------------------


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Optional[Path]:
    given = getattr(args, "config", None)
    if given is None or given == "":
        given = environ.get(opts.CONFIG_ENV) or None
    if given is None:
        return None
    return Path(os.path.abspath(_expand_user(str(given), environ)))


def read_toml(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {_reason(exc)}", ExitStatus.NO_INPUT) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(
            f"config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8",
            ExitStatus.CONFIG,
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        raise UserError(f"config file {path} is not valid TOML: {exc}", ExitStatus.CONFIG) from None


def _convert(option: opts.Option, raw: str) -> Any:
    """A string from a flag or a variable → the option's type; left as is when it does not parse,
    so that validation reports it with the rest."""
    text = raw.strip()
    if option.type == "int":
        try:
            return int(text, 10)
        except ValueError:
            return raw
    if option.type == "float":
        try:
            value = float(text)
        except ValueError:
            return raw
        return value if math.isfinite(value) else raw
    if option.type == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        return raw
    if option.type == "list":
        return [part for part in re.split(r"[,\s]+", text) if part]
    if option.type == "choice":
        return text.lower()
    if option.type == "path" or option.pattern:
        return text
    return raw


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


def schema_problems(
    values: Mapping[str, Tuple[Any, Origin]],
) -> Tuple[List[str], Dict[str, str], List[str]]:
    """The merged values checked against the published schema, each error in the user's words.

    Returns the unknown keys (with the closest known one), one message per invalid key in the order
    of `kata_events.options.OPTIONS` (key, value, where it came from, what is expected), and the
    required keys missing (with the three ways to give each).
    """
    instance = {name: value for name, (value, _) in values.items()}
    errors = list(_schema_validator().iter_errors(instance))
    kinds = {error.validator for error in errors}
    keys = {str(error.absolute_path[0]) for error in errors if error.absolute_path}
    unknown = [
        f"unknown key {key!r} in {values[key][1].label}{_suggest(key, opts.BY_NAME)}"
        for key in instance
        if "additionalProperties" in kinds and key not in opts.BY_NAME
    ]
    missing = [
        f"{o.name} is required: give {o.flag}, set {o.env}, or put {o.name} = ... in the config file"
        for o in opts.OPTIONS
        if "required" in kinds and o.required and o.name not in instance
    ]
    invalid = {
        o.name: f"{o.name} = {'<redacted>' if o.secret else _shown(values[o.name][0])} "
        f"(from {values[o.name][1].label}): expected " + o.allowed_text
        for o in opts.OPTIONS
        if o.name in keys
    }
    return unknown, invalid, missing


def _take_id_from_url(values: Dict[str, Tuple[Any, Origin]]) -> None:
    """A pasted events URL names the external system id: use it when the id is not given."""
    if "external_system_id" in values or "url" not in values:
        return
    urls, origin = values["url"]
    if not isinstance(urls, list):
        return
    ids = set()
    for url in urls:
        try:
            ids.add(normalize_url(url)[1] if isinstance(url, str) else None)
        except ValueError:
            pass
    ids.discard(None)
    if len(ids) == 1:
        values["external_system_id"] = (ids.pop(), Origin("url", f"the url ({origin.label})"))


def _normalize_urls(values: Mapping[str, Tuple[Any, Origin]]) -> Tuple[Tuple[str, ...], List[str]]:
    urls, origin = values["url"]
    given_id = values.get("external_system_id", (None, None))[0]
    normalized: List[str] = []
    problems: List[str] = []
    ids = {}
    for url in urls:
        try:
            base, found_id = normalize_url(url)
        except ValueError as exc:
            problems.append(f"url = {_shown(url)} (from {origin.label}): {exc}")
            continue
        if found_id is not None:
            ids[found_id.lower()] = url
        if base not in normalized:
            normalized.append(base)
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
    return tuple(normalized), problems


def _config_error(problems: List[str]) -> UserError:
    if len(problems) == 1:
        message = f"invalid configuration: {problems[0]}"
    else:
        message = f"invalid configuration ({len(problems)} problems):\n" + "\n".join(
            f"  - {p}" for p in problems
        )
    return UserError(message, ExitStatus.CONFIG, problems)


# -- files -----------------------------------------------------------------------------------------


def _expand_user(path: str, environ: Mapping[str, str]) -> str:
    if path == "~" or path.startswith("~/"):
        home = environ.get("HOME")
        if home:
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


def _check_readable(files: List[Tuple[str, Path]]) -> None:
    problems = []
    for name, path in files:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            problems.append(f"{name} file {path}: {_reason(exc)}")
    if len(problems) == 1:
        raise UserError(f"cannot read {problems[0]}", ExitStatus.NO_INPUT, problems)
    if problems:
        raise UserError(
            "cannot read:\n" + "\n".join(f"  - {p}" for p in problems), ExitStatus.NO_INPUT, problems
        )


def _suggest(word: str, known: Any) -> str:
    if word.upper().startswith(opts.ENV_PREFIX):
        # Compare the part after the shared prefix, which would make every name look close.
        key = word[len(opts.ENV_PREFIX) :].lower()
        names = {name[len(opts.ENV_PREFIX) :].lower(): name for name in known}
        close = [names[c] for c in difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(word.replace("-", "_"), list(known), n=1, cutoff=0.6)
    if close:
        return f": did you mean {close[0]}?"
    return ": see `kata-events run --help` for the known ones"
