"""Every option of ``kata-events run``, declared once.

Each `Option` holds a name (the config file key), a type, a default, a range or a set of choices
and its help. Everything else is derived from that one list: the command line flags
(``max_events`` → ``--max-events``), the environment variables (``KATA_EVENTS_MAX_EVENTS``), the
JSON schema that validates a configuration, and the option table in docs/configuration.md (a test
fails when that table drifts). Reading, merging and checking values is `kata_events.config`'s job;
this module only describes. It never reads files or the environment and never logs.

``python -m kata_events.options`` prints the docs/configuration.md table; ``--schema`` the JSON schema.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence, Tuple

ENV_PREFIX = "KATA_EVENTS_"

#: The flag and variable that name the config file; the file itself cannot set them.
CONFIG_FLAG = "--config"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

#: Events stay retrievable on the Central Node for at most this long.
SERVER_RETENTION_SECONDS = 2 * 3600

# ISO-8601 PT300S is the documented ceiling of the long poll.
MAX_TIMEOUT_LIMIT = 300

# Events are a few KB; 16 MiB is far beyond any real one and keeps a few copies of it cheap.
MAX_EVENT_BYTES_DEFAULT = 16 * 1024 * 1024

UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
# A port alone, or HOST:PORT with a name, an IPv4 address or a bracketed IPv6 one.
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+"
_PORT = r"[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]"
LISTEN_PATTERN = f"^(?:(?:{_HOST}):)?(?:{_PORT})$"


def parse_listen(text: str, default_host: Optional[str] = "127.0.0.1") -> Tuple[str, int]:
    """`LISTEN_PATTERN` or port 0, which asks for a free one: ``PORT`` (on ``default_host``; refused
    when it is None), ``HOST:PORT`` or ``[V6]:PORT``. Raises ValueError with the reason."""
    match = re.fullmatch(f"(?:({_HOST}):)?({_PORT}|0)", text.strip())
    host = match and (match[1] or default_host)
    if not host:
        raise ValueError(f"{text!r} is not {'PORT or ' if default_host else ''}HOST:PORT")
    return host.strip("[]"), int(match[2])


#: A proxy's address: scheme, optional credentials, host and port, nothing after.
PROXY_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+/?$"
# 64 hex digits, or 32 colon-separated pairs as `openssl x509 -fingerprint -sha256` prints them.
PIN_PATTERN = r"^(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})$"
#: A node's name: it becomes a metrics label, a log field, a perfdata label (``lag_<name>``) and
#: often a directory and a systemd instance name, so letters, digits, ``.``, ``_`` and ``-`` only.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


@dataclass(frozen=True)
class Option:
    """One ``run`` option: the single definition its flag, variable, key and schema come from.

    ``default`` is None when there is none or when `kata_events.config` computes it at load time
    (``state_file``, ``max_unacked``); ``default_doc`` then says what it is, for the help and the
    option table. ``help`` comes from `HELP`.
    """

    name: str
    #: str, int, float, bool, list, choice (with ``choices``) or path: how a value is written in
    #: TOML, converted from a variable, and validated.
    type: str
    default: Any = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    metavar: Optional[str] = None
    help: str = ""
    default_doc: str = ""
    choices: Tuple[str, ...] = ()
    pattern: Optional[str] = None
    required: bool = False
    #: What a valid value looks like, for error messages; derived from the type when empty.
    allowed: str = ""
    #: Only ``run`` uses it (streaming, delivery, acknowledgements, logs, metrics, the size of a
    #: request): `check` accepts and validates the flag, so a run's command line can be checked as it
    #: is, but does not list it in its --help.
    run_only: bool = False
    #: A secret, given only by its environment variable: no flag (the process list shows flags), no
    #: config key (a file that says where the secret is, rather than the secret, is what a config
    #: names), and never shown.
    env_only: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def default_text(self) -> str:
        """The default as people read it."""
        if self.default_doc or self.default is None:
            return self.default_doc or "none"
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default) or '`""`'

    @property
    def allowed_text(self) -> str:
        if self.allowed:
            return self.allowed
        if self.type == "int":
            limits = "of at least {}" if self.maximum is None else "from {} to {}"
            return "an integer " + limits.format(self.minimum, self.maximum)
        if self.type == "float":
            return f"a number of seconds from {self.minimum:g} to {self.maximum:g}"
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        return {"bool": "true or false", "list": "a list of strings", "path": "a file path"}.get(
            self.type, "a string"
        )

    @property
    def metavar_text(self) -> str:
        if self.metavar:
            return self.metavar
        if self.type == "choice":
            return "{" + ",".join(self.choices) + "}"
        return "FILE" if self.type == "path" else self.name.upper()

    def schema(self) -> Dict[str, Any]:
        fragment: Dict[str, Any] = {
            "int": {"type": "integer"},
            "float": {"type": "number"},
            "bool": {"type": "boolean"},
            "list": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            "choice": {"type": "string", "enum": list(self.choices)},
            "path": {"type": "string", "minLength": 1},
        }.get(self.type, {"type": "string"})
        extra = dict(minimum=self.minimum, maximum=self.maximum, pattern=self.pattern, description=self.help)
        fragment.update((k, v) for k, v in dict(extra, default=self.default).items() if v is not None)
        return fragment


#: Each option's help, for --help, the schema and the docs table (a path's ends with `PATH_NOTE`):
#: ``name:`` at the start of a line opens one; indented lines go on with it.
HELP = """
url: The Central Node's base address, https://HOST[:PORT] (https:// is required); repeat it for the
  addresses of a cluster, tried in turn when one fails. A full events URL copied from the documentation is
  accepted too. The variable takes a comma- or space-separated list.
external_system_id: The external system's UUID, as approved on the Central Node (`kata-events init` makes
  one).
name: A short name for this Central Node, unique among the runs on one collector: every metrics family
  carries it as the node label, every log line as its node field, and `kata-events status` names the node
  with it. Letters, digits, '.', '_' and '-'.
cert: The client certificate (PEM) presented to the Central Node.
key: The private key (PEM) of the client certificate.
key_password_file: A file holding the passphrase of an encrypted key (PKCS#8 or PEM; one trailing line break
  is ignored), read each time the key is loaded. Without it: KATA_EVENTS_KEY_PASSWORD, then the systemd
  credential key-password in $CREDENTIALS_DIRECTORY (LoadCredential=).
key_password: The passphrase of an encrypted key itself, for containers where a file is awkward;
  key_password_file wins over it. Environment only: never a flag or a config key, never logged.
ca_file: CA certificates (PEM) that verify the Central Node's certificate.
pin_sha256: Trust the Central Node certificate with this SHA-256 fingerprint (64 hex digits, colons
  optional), e.g. for a self-signed one.
insecure: Do not verify the Central Node's certificate at all (warned on every start; use ca_file or
  pin_sha256 instead).
proxy: The HTTP proxy to the Central Node, http://[USER:PASSWORD@]HOST:PORT, or https://... for TLS to the
  proxy too (its certificate checked against the system's trust store; SSL_CERT_FILE names another bundle);
  a CONNECT tunnel: TLS stays end to end, a pin still holds. Wins over HTTPS_PROXY, ALL_PROXY and NO_PROXY,
  which are used otherwise. Its credentials never appear in a log line.
filter: Event filter bound to the subscription, e.g. Ioa.Severity == 'High'; changing it starts a new
  subscription. "" means all events.
max_events: The most events the server returns per request.
max_timeout: Seconds the server may hold a request open while it collects events (long polling).
state_file: The file that keeps the continuation token (locked: one process per file).
ack: Delivery acknowledgement: auto (acknowledgements if the shipper sends START on stdin), none (a line
  counts as delivered once the reader has taken it: pipe drained, TCP acknowledged or file fsynced), lines
  (expect ACK lines on stdin).
settle_time: With --ack none on a pipe or socket: a line counts as delivered once the reader took it and
  stayed this many seconds after that; a stop (signal, broken pipe) commits nothing younger (at most
  settle_lines lines), and --once waits this long after its last line. Covers a shipper that reads on while
  it shuts down (Fluent Bit's exec input drops what it read after its engine's last pass, up to 1,024 lines,
  1.4 s before it signals its child at catch-up speed on a loaded host). 0 turns it off.
settle_lines: With --ack none on a pipe or socket: the most lines a stop leaves uncounted of those the
  reader took in the last settle_time seconds, so a stop at full speed re-sends a count, not a second of
  throughput. The default covers what Fluent Bit's exec input can drop (1,024 records and its read buffer).
  0: no bound (the whole settle_time).
max_unacked: With acknowledgements: the most lines written but not yet acknowledged; writing pauses there.
ack_timeout: With acknowledgements: warn when lines wait longer than this many seconds for one.
log_level: The least severe log lines written to stderr.
log_format: Logs on stderr as JSON lines (json) or for people (text).
stats_interval: Seconds between two stats log lines; 0 turns them off.
lag_warning: Warn when the newest event delivered is older than this many seconds (the Central Node keeps
  events for at most 2 hours).
warn_line_bytes: Warn once when an event line is longer than this many bytes, for shippers with line limits;
  0 turns it off.
max_event_bytes: The largest event accepted, in bytes. A larger one (a broken server or proxy) is skipped,
  its bytes dropped as they arrive, with an event_skipped error naming its place and size; the rest of the
  page is delivered and its token committed, so one event cannot wedge the stream nor exhaust memory.
metrics_file: Write Prometheus metrics (kata_events_*) in the text format to this file for node_exporter's
  textfile collector (name it *.prom), replaced atomically every stats_interval seconds (60 when 0) and at
  the stop.
metrics_listen: Serve the same metrics on http://HOST:PORT/metrics; a port alone listens on loopback
  (127.0.0.1). Opt-in: nothing listens unless set.
once: Fetch until caught up (a page shorter than max_events), commit, exit 0: for schedulers and Fluent
  Bit's interval mode.
"""
PATH_NOTE = "A relative path in the config file is relative to the file's directory."

#: The options in the order of --help and the docs table; columns as `Option` declares them.
_ROWS: Tuple[Option, ...] = (
    Option(
        "url",
        "list",
        metavar="URL",
        required=True,
        allowed="https:// addresses such as https://cn.example.local or https://10.0.0.5:443",
    ),
    Option(
        "external_system_id",
        "str",
        metavar="UUID",
        pattern=UUID_PATTERN,
        required=True,
        allowed="a UUID such as 0b3c4f7e-5d2a-4a61-9b8e-2f6c1d0e9a7b",
    ),
    Option(
        "name",
        "str",
        default_doc="the host of the first url, e.g. cn.example.local or 10.0.0.5",
        pattern=NAME_PATTERN,
        allowed="a name of letters, digits, '.', '_' and '-' (at most 63), such as pcn or scn-msk",
        run_only=True,
    ),
    Option("cert", "path", required=True),
    Option("key", "path", required=True),
    Option("key_password_file", "path", default_doc="none (the key is not encrypted)"),
    Option("key_password", "str", default_doc="none", env_only=True),
    Option("ca_file", "path", default_doc="the system's trust store"),
    Option(
        "pin_sha256",
        "str",
        metavar="HEX",
        pattern=PIN_PATTERN,
        allowed="a SHA-256 fingerprint: 64 hex digits, colons optional",
    ),
    Option("insecure", "bool", False),
    Option(
        "proxy",
        "str",
        metavar="URL",
        default_doc="HTTPS_PROXY / ALL_PROXY unless NO_PROXY exempts the host; else none",
        pattern=PROXY_PATTERN,
        allowed="an http:// or https:// proxy address such as http://proxy.example.local:3128",
    ),
    Option("filter", "str", "", metavar="EXPR"),
    # 72000: accepted by the server per the original script; "the maximum depends on the installation".
    Option("max_events", "int", 10000, 1, 72000, "N", run_only=True),
    Option("max_timeout", "int", 60, 1, MAX_TIMEOUT_LIMIT, "SECONDS", run_only=True),
    Option(
        "state_file",
        "path",
        default_doc="`<external_system_id>.token` in `$STATE_DIRECTORY`, "
        "`$XDG_STATE_HOME/kata-events` or `~/.local/state/kata-events`",
    ),
    Option("ack", "choice", "auto", choices=("auto", "none", "lines"), run_only=True),
    # 5 s: Fluent Bit's exec input drops what it read after its engine's last pass over the input's
    # ring buffer; at catch-up speed on a loaded host that pass came 1.4 s before the child's SIGTERM
    # (its output workers stopping in between), not the 250 ms of an idle one. Vector, syslog-ng and
    # nc drop nothing they took at a clean stop.
    Option("settle_time", "float", 5.0, 0, 600, "SECONDS", run_only=True),
    # 1500: more than Fluent Bit's exec input can hold unflushed (1,024 records in its ring buffer, a
    # few in its read buffer). At most 1900: what a stop sends again stays within the 3,000-line bound.
    Option("settle_lines", "int", 1500, 0, 1900, "N", run_only=True),
    Option("max_unacked", "int", None, 1, None, "N", default_doc="the value of max_events", run_only=True),
    Option("ack_timeout", "int", 60, 1, 86400, "SECONDS", run_only=True),
    Option("log_level", "choice", "info", choices=("debug", "info", "warning", "error"), run_only=True),
    Option("log_format", "choice", "json", choices=("json", "text"), run_only=True),
    Option("stats_interval", "int", 60, 0, 86400, "SECONDS", run_only=True),
    Option("lag_warning", "int", 3600, 1, SERVER_RETENTION_SECONDS, "SECONDS", run_only=True),
    Option("warn_line_bytes", "int", 0, 0, 2**31 - 1, "BYTES", run_only=True),
    Option("max_event_bytes", "int", MAX_EVENT_BYTES_DEFAULT, 64 * 1024, 1024**3, "BYTES", run_only=True),
    Option("metrics_file", "path", default_doc="none (no file)", run_only=True),
    Option(
        "metrics_listen",
        "str",
        metavar="[HOST:]PORT",
        default_doc="none (nothing listens)",
        pattern=LISTEN_PATTERN,
        allowed="a port (1-65535) or HOST:PORT, e.g. 9464 or 0.0.0.0:9464",
        run_only=True,
    ),
    Option("once", "bool", False, run_only=True),
)
_HELP_BY_NAME = {
    name: " ".join(text.split()) for name, text in re.findall(r"^(\w+): (.+(?:\n .+)*)", HELP, re.M)
}
OPTIONS: Tuple[Option, ...] = tuple(
    replace(o, help=_HELP_BY_NAME[o.name] + (" " + PATH_NOTE if o.type == "path" else "")) for o in _ROWS
)

BY_NAME: Dict[str, Option] = {option.name: option for option in OPTIONS}
BY_ENV: Dict[str, Option] = {option.env: option for option in OPTIONS}


def add_run_arguments(parser: argparse.ArgumentParser, show_run_only: bool = True) -> None:
    """Add ``--config`` and one flag per option to ``parser``.

    A flag that is not given leaves no attribute (booleans: None), so `config` can tell it from a
    value; values stay strings here and are converted and checked together with the other sources.
    ``show_run_only=False`` (`check`) keeps the run-only flags out of --help while accepting them.
    """
    config_help = "TOML file with any of the options below as keys."
    if not show_run_only:
        config_help = (
            "The run's TOML file: the options below as keys; run's other keys are accepted and "
            "validated but not used by this command."
        )
    config_help += f" Default: none. Env: {CONFIG_ENV}."
    parser.add_argument(
        CONFIG_FLAG, dest="config", metavar="FILE", default=argparse.SUPPRESS, help=config_help
    )
    for option in OPTIONS:
        if option.env_only:
            continue
        # The one-line help, the accepted range of a number, the default, then where else it is set.
        help_text = option.help
        if option.type in ("int", "float") and option.minimum is not None:
            limits = " At least {:g}." if option.maximum is None else " From {:g} to {:g}."
            help_text += limits.format(option.minimum, option.maximum)
        help_text += " Required." if option.required else f" Default: {option.default_text.replace('`', '')}."
        repeat = " Repeatable." if option.type == "list" else ""
        help_text = f"{help_text}{repeat} Env: {option.env}.".replace("%", "%%")
        if option.run_only and not show_run_only:
            help_text = argparse.SUPPRESS
        if option.type == "bool":
            # None rather than SUPPRESS: 3.9's BooleanOptionalAction would print SUPPRESS in --help.
            how = dict(action=argparse.BooleanOptionalAction, default=None)
        else:
            action = "append" if option.type == "list" else "store"
            how = dict(action=action, metavar=option.metavar_text, default=argparse.SUPPRESS)
        parser.add_argument(option.flag, dest=option.name, help=help_text, **how)


def json_schema() -> Dict[str, Any]:
    """The JSON schema (draft 2020-12) of a complete ``run`` configuration."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kata-events run configuration",
        "type": "object",
        "properties": {option.name: option.schema() for option in OPTIONS},
        "required": [option.name for option in OPTIONS if option.required],
        "additionalProperties": False,
    }


def markdown_table() -> str:
    """The option table of docs/configuration.md, generated from `OPTIONS`."""
    lines = [
        "Every option is a flag, an environment variable and a key of the TOML config file; "
        "precedence: flag > environment > file > default. An empty variable counts as unset.",
        "",
        "| Key | Flag | Environment variable | Default | Meaning |",
        "|---|---|---|---|---|",
        f"| — | `{CONFIG_FLAG} FILE` | `{CONFIG_ENV}` | none "
        "| The TOML file holding any of the keys below. |",
    ]
    for option in OPTIONS:
        default = "**required**" if option.required else option.default_text
        if not option.default_doc and option.default not in (None, ""):
            default = f"`{default}`"
        key, flag = f"`{option.name}`", f"`{option.flag} {option.metavar_text}`"
        if option.env_only:
            key, flag = "—", "— (environment only)"
        elif option.type == "bool":
            flag = f"`{option.flag}`, `--no-{option.flag[2:]}`"
        elif option.type == "list":
            flag += " (repeatable)"
        row = (key, flag, f"`{option.env}`", default, option.help)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the docs/configuration.md option table, or the JSON schema with ``--schema``."""
    parser = argparse.ArgumentParser(prog="python -m kata_events.options", description=main.__doc__)
    parser.add_argument("--schema", action="store_true", help="print the JSON schema instead")
    args = parser.parse_args(argv)
    if args.schema:
        sys.stdout.write(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
