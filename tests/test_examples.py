"""The shipper examples set what delivery depends on, and each shipper's own checker accepts them.

The authority on a config is its shipper: ``vector validate``, ``fluent-bit --dry-run``, ``rsyslogd
-N1`` (with improg) and ``syslog-ng --syntax-only`` run where they are installed (CI installs
syslog-ng; the others are skipped with the reason). What delivery depends on is read from the
examples as text or TOML: a line-length limit left at a default that splits or cuts events, the
tool's stderr mixed into the event stream, a command that is not ``kata-events run``, a queue that
does not survive a restart. Vector's key names come from its source (``src/sources/exec/mod.rs``
and the codec/buffer/route configs), since its validator cannot run here.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import jsonschema
import pytest

from kata_events import config as kata_config
from kata_events import options
from shipper_helpers import fluent_bit_binary

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def is_kata_events_run(argv: List[str]) -> bool:
    """An argv (or shell words) that runs ``kata-events run`` by absolute path."""
    for i, word in enumerate(argv[:-1]):
        if word.endswith("/kata-events") and word.startswith("/") and argv[i + 1] == "run":
            return True
    return False


# --- Vector -------------------------------------------------------------------------------------

EXEC_KEYS = {
    "type",
    "mode",
    "scheduled",
    "streaming",
    "command",
    "environment",
    "clear_environment",
    "working_directory",
    "include_stderr",
    "maximum_buffer_size_bytes",
    "framing",
    "decoding",
}
STREAMING_KEYS = {"respawn_on_exit", "respawn_interval_secs"}
SINK_COMMON_KEYS = {"type", "inputs", "encoding", "framing", "buffer", "acknowledgements", "healthcheck"}
SOCKET_SINK_KEYS = SINK_COMMON_KEYS | {"mode", "address", "keepalive", "tls", "send_buffer_bytes"}
FILE_SINK_KEYS = SINK_COMMON_KEYS | {"path", "idle_timeout_secs", "compression", "timezone"}
ENCODING_KEYS = {"codec", "except_fields", "only_fields", "timestamp_format"}
BUFFER_KEYS = {"type", "max_events", "max_size", "when_full"}
#: src/transforms/route.rs (RouteConfig) plus the keys every transform takes.
ROUTE_KEYS = {"type", "inputs", "route", "reroute_unmatched"}
VECTOR_DISK_BUFFER_MIN = 268435488


@pytest.fixture(scope="module")
def vector() -> dict:
    return tomllib.loads(read("vector.toml.example"))


def test_vector_exec_source_streams_kata_events_run_with_stderr_marked(vector: dict) -> None:
    source = vector["sources"]["kata_events"]
    assert set(source) <= EXEC_KEYS, set(source) - EXEC_KEYS
    assert source["type"] == "exec"
    assert source["mode"] == "streaming"
    assert is_kata_events_run(source["command"]), source["command"]
    assert source["command"][source["command"].index("--config") + 1].startswith("/")
    # Kept (Vector's default is true), and routed apart from the events: see the route test.
    assert source["include_stderr"] is True
    assert set(source["streaming"]) <= STREAMING_KEYS
    assert source["streaming"]["respawn_on_exit"] is True
    assert source["streaming"]["respawn_interval_secs"] >= 1


def test_vector_decodes_one_json_object_per_line_of_up_to_at_least_one_mib(vector: dict) -> None:
    source = vector["sources"]["kata_events"]
    assert source["decoding"] == {"codec": "json"}
    framing = source["framing"]
    assert set(framing) == {"method", "newline_delimited"}
    assert framing["method"] == "newline_delimited"
    assert set(framing["newline_delimited"]) <= {"max_length", "oversized_action"}
    assert framing["newline_delimited"]["max_length"] >= MIB


def _route_matches(condition: str, event: dict) -> bool:
    """The example's VRL conditions, which are all ``.FIELD == "TEXT"`` or ``.FIELD != "TEXT"``."""
    match = re.fullmatch(r'\.(\w+) (==|!=) "([^"]*)"', condition)
    assert match, f"not a condition this test understands: {condition}"
    field, op, text = match.groups()
    return (event.get(field) == text) == (op == "==")


def _with_exec_metadata(event: dict, stream: str) -> dict:
    """What Vector's exec source makes of a line: it inserts `stream` only where the line has none
    (LegacyKey::InsertIfEmpty in src/sources/exec/mod.rs)."""
    return {"stream": stream, **event}


def test_vector_routes_the_tools_stderr_to_its_own_log_sink(vector: dict) -> None:
    route = vector["transforms"]["kata_events_split"]
    assert set(route) <= ROUTE_KEYS, set(route) - ROUTE_KEYS
    assert route["type"] == "route" and route["inputs"] == ["kata_events"]
    assert set(route["route"]) == {"events", "logs"}
    assert not set(route["route"]) & {"_unmatched", "_default"}  # reserved by Vector
    routed = {
        "a log line": (_with_exec_metadata({"event": "lag", "level": "warning"}, "stderr"), {"logs"}),
        "an event": (_with_exec_metadata({"EventType": "process"}, "stdout"), {"events"}),
        "an event with its own stream field": (
            _with_exec_metadata({"EventType": "process", "stream": "x"}, "stdout"),
            {"events"},
        ),
    }
    for what, (event, expected) in routed.items():
        got = {name for name, condition in route["route"].items() if _route_matches(condition, event)}
        assert got == expected, what  # exactly one route: nothing unmatched, nothing twice
    inputs = {name: sink["inputs"] for name, sink in vector["sinks"].items()}
    assert inputs.pop("kata_events_logs") == ["kata_events_split.logs"]
    assert set(map(tuple, inputs.values())) == {("kata_events_split.events",)}
    logs_buffer = vector["sinks"]["kata_events_logs"]["buffer"]
    # A full log buffer must not stop the events behind the same route.
    assert logs_buffer["type"] == "memory" and logs_buffer["when_full"] == "drop_newest"
    assert vector["sinks"]["kata_events_logs"]["path"].startswith("/var/log/kata-events/")


def test_vector_sinks_use_known_keys_and_disk_buffers(vector: dict) -> None:
    assert set(vector) <= {"data_dir", "sources", "transforms", "sinks"}
    sinks = vector["sinks"]
    assert {sink["type"] for sink in sinks.values()} == {"socket", "file"}
    for name, sink in sinks.items():
        allowed = SOCKET_SINK_KEYS if sink["type"] == "socket" else FILE_SINK_KEYS
        assert set(sink) <= allowed, (name, set(sink) - allowed)
        assert set(sink["encoding"]) <= ENCODING_KEYS
        assert sink["encoding"]["codec"] == "json"
        assert sink["framing"] == {"method": "newline_delimited"}
        buffer = sink["buffer"]
        assert set(buffer) <= BUFFER_KEYS
        if sink["inputs"] != ["kata_events_split.events"]:
            continue  # the tool's own logs: see the route test
        assert buffer["type"] == "disk"
        assert buffer["max_size"] >= VECTOR_DISK_BUFFER_MIN
        assert buffer["when_full"] == "block"
    socket_sink = next(s for s in sinks.values() if s["type"] == "socket")
    assert socket_sink["mode"] == "tcp"
    assert re.fullmatch(r"[\w.-]+:\d+", socket_sink["address"])


@pytest.mark.skipif(shutil.which("vector") is None, reason="vector is not installed")
def test_vector_validates_the_example(tmp_path: Path) -> None:
    text = read("vector.toml.example")
    text = text.replace('data_dir = "/var/lib/kata-events"', f'data_dir = "{tmp_path}"')
    config = tmp_path / "vector.toml"
    config.write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["vector", "validate", "--no-environment", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Fluent Bit (classic format) -----------------------------------------------------------------
# Fluent Bit's own --dry-run is the authority on keys and values (below, where it is installed);
# these read the few lines delivery depends on as text.


def fluent_bit_blocks(name: str, section: str) -> List[Dict[str, str]]:
    """The ``Key Value`` lines of each ``[SECTION]`` of an example, keys lowercased: active blocks,
    then the commented-out alternatives (``# [SECTION]`` followed by ``#     Key Value`` lines)."""
    blocks: List[Dict[str, str]] = []
    for commented in (False, True):
        prefix = "# " if commented else ""
        header = re.compile(rf"(?m)^{re.escape(prefix)}\[{section}\]\n((?:{re.escape(prefix)} +\S.*\n)+)")
        for match in header.finditer(read(name)):
            lines = [line[len(prefix) :].strip() for line in match.group(1).splitlines()]
            entries = [line.split(None, 1) for line in lines if not line.startswith("#")]
            blocks.append({key.lower(): value.strip() for key, value in entries})
    return blocks


def fluent_bit_size(value: str) -> int:
    """Fluent Bit's size syntax (flb_utils_size_to_bytes): K, M, G are powers of 1000."""
    match = re.fullmatch(r"(\d+)([KMG]?)B?", value.strip().upper())
    assert match, value
    return int(match.group(1)) * {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}[match.group(2)]


def fluent_bit_on(value: str) -> bool:
    return value.lower() in ("on", "true", "yes", "1")


def exec_inputs() -> List[Dict[str, str]]:
    """The example's exec inputs: the active long-running one, then the commented interval one."""
    return fluent_bit_blocks("fluent-bit.conf.example", "INPUT")


def test_fluent_bit_long_running_exec_input() -> None:
    active = exec_inputs()[0]
    assert active["name"] == "exec"
    # Fluent Bit runs Command with /bin/sh -c; `exec` lets its SIGTERM reach the tool itself.
    words = active["command"].split()
    assert words[0] == "exec"
    assert is_kata_events_run(words[1:])
    assert "--once" not in words
    # A oneshot command that never exits blocks the engine unless the input has its own thread.
    assert fluent_bit_on(active["oneshot"])
    assert fluent_bit_on(active["threaded"])


def test_fluent_bit_interval_mode_drains_with_once() -> None:
    inputs = exec_inputs()
    assert len(inputs) == 2
    interval = inputs[1]
    assert "interval_sec" in interval and "oneshot" not in interval
    words = interval["command"].split()
    assert is_kata_events_run(words[1:])
    assert "--once" in words


def test_fluent_bit_reads_lines_of_a_mebibyte_and_parses_them_as_json() -> None:
    parsers = {
        entries["name"]: entries for entries in fluent_bit_blocks("fluent-bit-parsers.conf.example", "PARSER")
    }
    (service,) = fluent_bit_blocks("fluent-bit.conf.example", "SERVICE")
    assert service["parsers_file"].endswith("kata-events-parsers.conf")
    for entries in exec_inputs():
        # The default 4096 splits longer lines into pieces that each fail JSON parsing.
        assert fluent_bit_size(entries["buf_size"]) >= MIB
        parser = parsers[entries["parser"]]
        assert parser["format"] == "json"
        # The stock json parser's Time_Key would drop events whose "time" has another format.
        assert "time_key" not in parser


def test_fluent_bit_size_follows_fluent_bit_not_binary_prefixes() -> None:
    assert fluent_bit_size("4096") == 4096
    assert fluent_bit_size("1M") == 1_000_000 < MIB
    assert fluent_bit_size("1048576") == MIB


def test_fluent_bit_keeps_utf8_as_written() -> None:
    (service,) = fluent_bit_blocks("fluent-bit.conf.example", "SERVICE")
    assert not fluent_bit_on(service["json.escape_unicode"])


#: systemd's default stop timeout (TimeoutStopSec): SIGKILL after that.
SYSTEMD_STOP_TIMEOUT = 90


def test_fluent_bit_grace_lets_it_flush_before_the_service_manager_kills_it() -> None:
    (service,) = fluent_bit_blocks("fluent-bit.conf.example", "SERVICE")
    # Cut off mid-send when its grace ends, Fluent Bit sends those chunks again after the restart
    # (the default 5 s did at catch-up); killed by the service manager, it loses its stop as well.
    assert 30 <= int(service["grace"]) < SYSTEMD_STOP_TIMEOUT


def test_fluent_bit_tcp_output_writes_json_lines() -> None:
    tcp = fluent_bit_blocks("fluent-bit.conf.example", "OUTPUT")[0]
    assert tcp["name"] == "tcp"
    assert tcp["format"] == "json_lines"
    assert tcp["match"] == "kata.events"
    assert int(tcp["port"]) > 0
    assert tcp["retry_limit"] == "no_limits"


def fluent_bit_interval_variant(text: str) -> str:
    """The example with the long-running input commented out and the interval one active."""
    out, block = [], ""
    for line in text.splitlines():
        if line.startswith("[INPUT]"):
            block = "active"
        elif line.startswith("# [INPUT]"):
            block = "commented"
        elif not line.strip():
            block = ""
        if block == "active":
            line = "# " + line
        elif block == "commented":
            line = line[2:]
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("mode", ["long-running", "interval"])
def test_fluent_bit_dry_run_accepts_the_example(tmp_path: Path, mode: str) -> None:
    binary = fluent_bit_binary()  # $FLUENT_BIT or PATH, as for the restart tests; else skipped
    parsers = tmp_path / "parsers.conf"
    parsers.write_text(read("fluent-bit-parsers.conf.example"), encoding="utf-8")
    text = read("fluent-bit.conf.example").replace("/etc/fluent-bit/kata-events-parsers.conf", str(parsers))
    text = text.replace("/var/lib/fluent-bit/storage", str(tmp_path / "storage"))
    if mode == "interval":
        text = fluent_bit_interval_variant(text)
        assert re.search(r"(?m)^    Interval_Sec ", text) and re.search(r"(?m)^    Command .*--once", text)
    config = tmp_path / "fluent-bit.conf"
    config.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [binary, "--dry-run", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "configuration test is successful" in output, output


# --- rsyslog (RainerScript) ----------------------------------------------------------------------
# rsyslogd -N1 is the authority on the syntax and the parameters (below, where rsyslogd with
# improg is installed); these read the statements delivery depends on as text.


def rsyslog_statements(kind: str, include_commented: bool = False) -> List[Dict[str, str]]:
    """The ``name="value"`` parameters (names lowercased) of each ``kind(...)`` statement of the
    example; with ``include_commented``, of the commented-out ones too."""
    text = read("rsyslog-improg.conf.example")
    if include_commented:
        text = re.sub(r"(?m)^(\s*)# ", r"\1", text)
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    found = []
    for match in re.finditer(rf"(?<![\w.]){kind}\s*\(([^()]*)\)", text):
        params = re.findall(r'([A-Za-z][\w.]*)\s*=\s*"([^"]*)"', match.group(1))
        found.append({name.lower(): value for name, value in params})
    return found


def rsyslog_size(value: str) -> int:
    """rsyslog's size syntax: lowercase k, m, g are powers of 1024, uppercase powers of 1000."""
    match = re.fullmatch(r"(\d+)([kmgKMG]?)", value)
    assert match, value
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}
    return int(match.group(1)) * factor[match.group(2)]


def test_rsyslog_max_message_size_is_set_before_the_input_and_at_least_one_mib() -> None:
    (settings,) = [params for params in rsyslog_statements("global") if "maxmessagesize" in params]
    assert rsyslog_size(settings["maxmessagesize"]) >= MIB
    assert rsyslog_size("8k") == 8192 and rsyslog_size("1m") == MIB
    text = read("rsyslog-improg.conf.example")
    # rsyslog applies maxMessageSize to inputs defined after it.
    assert text.index('global(maxMessageSize="') < text.index("input(")


def test_rsyslog_improg_runs_kata_events_with_acknowledgements() -> None:
    assert {"load": "improg"} in rsyslog_statements("module")
    (improg,) = rsyslog_statements("input")
    assert improg["type"] == "improg"
    # improg splits binary on spaces and execs it: no shell, so no PATH lookup and no quoting.
    argv = improg["binary"].split(" ")
    assert argv[0].startswith("/")
    assert is_kata_events_run(argv)
    assert argv[argv.index("--config") + 1].startswith("/")
    assert "--ack" not in argv or argv[argv.index("--ack") + 1] in ("auto", "lines")
    assert improg["confirmmessages"] == "on"
    assert improg["signalonclose"] == "on"
    assert int(improg["closetimeout"]) >= 1000
    assert improg["tag"]  # required by improg


def test_rsyslog_ruleset_has_a_disk_assisted_queue_and_forwards_only_the_line() -> None:
    (improg,) = rsyslog_statements("input")
    rulesets = {params["name"]: params for params in rsyslog_statements("ruleset")}
    queue = rulesets[improg["ruleset"]]
    assert queue["queue.type"] == "LinkedList"
    assert queue["queue.filename"]
    assert queue["queue.saveonshutdown"] == "on"
    templates = {params["name"]: params for params in rsyslog_statements("template")}
    (omfwd,) = [params for params in rsyslog_statements("action") if params["type"] == "omfwd"]
    assert omfwd["protocol"] == "tcp"
    assert omfwd["action.resumeretrycount"] == "-1"
    template = templates[omfwd["template"]]
    assert template["type"] == "string"
    assert template["string"] == "%msg%\\n"
    # The commented alternative writes the same lines to a file.
    (omfile,) = [p for p in rsyslog_statements("action", include_commented=True) if p["type"] == "omfile"]
    assert omfile["template"] == omfwd["template"]


def rsyslogd() -> str:
    return shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else "")


def improg_module_dir() -> str:
    """Where improg.so is: a distribution's module directory, or PREFIX/lib/rsyslog of a build."""
    candidates = ["/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib64/rsyslog", "/usr/lib/rsyslog"]
    if rsyslogd():
        candidates.append(str(Path(rsyslogd()).resolve().parents[1] / "lib" / "rsyslog"))
    for candidate in candidates:
        if (Path(candidate) / "improg.so").exists():
            return candidate
    return ""


@pytest.mark.skipif(not (rsyslogd() and improg_module_dir()), reason="rsyslogd with improg is not installed")
def test_rsyslogd_accepts_the_example(tmp_path: Path) -> None:
    text = read("rsyslog-improg.conf.example").replace(
        '# global(workDirectory="/var/spool/rsyslog")', f'global(workDirectory="{tmp_path}")'
    )
    config = tmp_path / "rsyslog.conf"
    config.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [rsyslogd(), "-N1", "-f", str(config), "-M", improg_module_dir()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- syslog-ng -----------------------------------------------------------------------------------


def syslog_ng_source_block(text: str) -> str:
    match = re.search(r"source\s+s_kata_events\s*\{(.*?)\n\};", text, re.S)
    assert match
    return re.sub(r"(?m)^\s*#.*$", "", match.group(1))


def syslog_ng_size(value: str) -> int:
    return int(value)


def test_syslog_ng_program_source_takes_whole_lines_of_a_mebibyte() -> None:
    source = syslog_ng_source_block(read("syslog-ng.conf.example"))
    program = re.search(r'program\(\s*"((?:[^"\\]|\\.)+)"', source)
    assert program
    # syslog-ng runs the string with /bin/sh -c, the child's stderr on /dev/null, and starts it
    # again at once whenever it ends: the log directory is made first, stderr is appended to a file
    # in it, and a failure is logged (logger) and paced (sleep) rather than looped unseen.
    mkdir, run, on_failure = re.fullmatch(r"(mkdir -p \S+); (.*?) \|\| \{ (.*) \}", program.group(1)).groups()
    words = run.split()
    assert is_kata_events_run(words)
    log_file = next(word[3:] for word in words if word.startswith("2>>/"))
    assert mkdir == f"mkdir -p {log_file.rsplit('/', 1)[0]}"
    assert on_failure.startswith("logger -t kata-events ") and "$?" in on_failure
    assert re.search(r"; sleep [1-9]\d*;$", on_failure)
    assert re.search(r"\bflags\(\s*no-parse\s*\)", source)
    size = re.search(r"\blog-msg-size\(\s*(\d+)\s*\)", source)
    assert size and syslog_ng_size(size.group(1)) >= MIB
    # Nothing but the program() call with those two options.
    leftover = re.sub(
        r'program\(\s*"(?:[^"\\]|\\.)+"|flags\(\s*no-parse\s*\)|log-msg-size\(\s*\d+\s*\)', "", source
    )
    assert re.fullmatch(r"[\s);]*", leftover), leftover


def test_syslog_ng_destinations_write_only_the_line_under_flow_control() -> None:
    text = read("syslog-ng.conf.example")
    template = re.search(r'template\s+(\w+)\s*\{\s*template\("([^"]*)"\);\s*\};', text)
    assert template and template.group(2) == "${MESSAGE}\\n"
    for destination in ("d_kata_siem", "d_kata_file"):
        block = re.search(rf"destination\s+{destination}\s*\{{(.*?)\n\}};", text, re.S)
        assert block, destination
        assert f"template({template.group(1)})" in block.group(1)
    assert re.search(r'network\("[\w.-]+"\s+transport\("tcp"\)\s+port\(\d+\)', text)
    log = re.search(r"\nlog\s*\{(.*?)\n\};", text, re.S)
    assert log
    assert "source(s_kata_events);" in log.group(1)
    flags = re.search(r"flags\(([^)]*)\);", log.group(1))
    assert flags
    assert {flag.strip() for flag in flags.group(1).split(",")} == {"flow-control", "final"}


def syslog_ng() -> str:
    fallback = "/usr/sbin/syslog-ng"
    return shutil.which("syslog-ng") or (fallback if Path(fallback).exists() else "")


def syslog_ng_config_version(binary: str) -> str:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^Config version:\s*(\d+\.\d+)", output, re.M)
    assert match, output
    return match.group(1)


@pytest.mark.skipif(not syslog_ng(), reason="syslog-ng is not installed")
@pytest.mark.parametrize("disk_buffer", [False, True], ids=["as-is", "with-disk-buffer"])
def test_syslog_ng_accepts_the_example(tmp_path: Path, disk_buffer: bool) -> None:
    text = read("syslog-ng.conf.example")
    if disk_buffer:
        text = text.replace("    # disk-buffer(", "    disk-buffer(")
        assert "    disk-buffer(" in text
    config = tmp_path / "syslog-ng.conf"
    config.write_text(f"@version: {syslog_ng_config_version(syslog_ng())}\n{text}", encoding="utf-8")
    result = subprocess.run(
        [syslog_ng(), "--syntax-only", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not syslog_ng(), reason="syslog-ng is not installed")
def test_syslog_ng_syntax_check_catches_a_misspelt_option(tmp_path: Path) -> None:
    text = read("syslog-ng.conf.example").replace("log-msg-size(", "log-msg-sise(")
    config = tmp_path / "syslog-ng.conf"
    config.write_text(f"@version: {syslog_ng_config_version(syslog_ng())}\n{text}", encoding="utf-8")
    result = subprocess.run(
        [syslog_ng(), "--syntax-only", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


# --- systemd ---------------------------------------------------------------------------------------


def parse_unit(text: str) -> Dict[str, Dict[str, List[str]]]:
    sections: Dict[str, Dict[str, List[str]]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        entry = re.fullmatch(r"([A-Za-z]+)=(.*)", line)
        if not entry or current is None:
            raise ValueError(f"line {number}: {raw!r}")
        current.setdefault(entry.group(1), []).append(entry.group(2))
    return sections


def test_systemd_unit_runs_a_sandboxed_shipper_with_a_state_directory() -> None:
    unit = parse_unit(read("kata-events.service.example"))
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["User"] == "kata-events"
    assert service["StateDirectory"] == "kata-events"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["Restart"] == "always"
    assert service["CapabilityBoundingSet"] == ""
    # The shipper runs kata-events with the config vector.toml.example names.
    assert service["ExecStart"].split()[-1] == "/etc/kata-events/vector.toml"
    vector = tomllib.loads(read("vector.toml.example"))
    assert vector["data_dir"] == "/var/lib/" + service["StateDirectory"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify wants the executables to exist; the shipper is not installed here.
    text = read("kata-events.service.example").replace("/usr/bin/vector", "/bin/true")
    unit = tmp_path / "kata-events.service"
    unit.write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "kata-events.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


# --- kata-events' own config -----------------------------------------------------------------------


def commented_assignments(text: str) -> Dict[str, object]:
    """``# key = value`` lines, parsed as TOML: commented alternatives must be valid too."""
    found: Dict[str, object] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"# ([a-z_0-9]+ = .+)", line)
        if match:
            found.update(tomllib.loads(match.group(1)))
    return found


def test_config_example_sets_every_option_and_is_valid() -> None:
    text = read("kata-events.toml.example")
    active = tomllib.loads(text)
    commented = commented_assignments(text)
    known = {option.name for option in options.OPTIONS if not option.env_only}
    assert set(active) | set(commented) == known
    assert not set(active) & set(commented)
    jsonschema.validate(active, options.json_schema())
    jsonschema.validate({**active, **commented}, options.json_schema())


def test_config_example_loads_through_the_tool_s_own_loader(tmp_path: Path) -> None:
    text = read("kata-events.toml.example").replace("/etc/kata-events/", f"{tmp_path}/")
    text = text.replace("/var/lib/kata-events/", f"{tmp_path}/")
    for name in ("client.crt", "client.key", "central-node-ca.pem"):
        (tmp_path / name).write_text("placeholder\n", encoding="utf-8")
    config_file = tmp_path / "config.toml"
    config_file.write_text(text, encoding="utf-8")
    parser = argparse.ArgumentParser()
    options.add_run_arguments(parser)
    args = parser.parse_args(["--config", str(config_file)])
    config = kata_config.load_run_config(args, {})
    active = tomllib.loads(text)
    assert len(config.url) == len(active["url"])
    assert config.warn_line_bytes == active["warn_line_bytes"]
    assert all(origin.startswith("config file") for name, origin in config.sources.items() if name in active)


def test_warn_line_bytes_fits_every_shipper_example() -> None:
    warn = tomllib.loads(read("kata-events.toml.example"))["warn_line_bytes"]
    vector = tomllib.loads(read("vector.toml.example"))
    assert warn <= vector["sources"]["kata_events"]["framing"]["newline_delimited"]["max_length"]
    # fgets() keeps Buf_Size - 1 bytes including the newline.
    for entries in exec_inputs():
        assert warn <= fluent_bit_size(entries["buf_size"]) - 2
    size = next(
        params["maxmessagesize"] for params in rsyslog_statements("global") if "maxmessagesize" in params
    )
    assert warn <= rsyslog_size(size)
    size_ng = re.search(r"log-msg-size\((\d+)\)", syslog_ng_source_block(read("syslog-ng.conf.example")))
    assert size_ng and warn <= int(size_ng.group(1))
