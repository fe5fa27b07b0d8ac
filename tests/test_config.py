"""The run configuration: one option list, four sources, every problem reported at once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Dict, Optional

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kata_events import config, logs
from kata_events import options as opts
from kata_events.config import Config, describe, load_run_config, normalize_fingerprint, normalize_url
from kata_events.exits import ExitStatus, UserError

ID = "0b3c4f7e-5d2a-4a61-9b8e-2f6c1d0e9a7b"
OTHER_ID = "9d1e2a3b-0000-4c5d-8e9f-112233445566"
PIN = "AB:" * 31 + "CD"
ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    opts.add_run_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A directory with a (placeholder) certificate and key: config only checks they are readable."""
    (tmp_path / "client.crt").write_text("certificate placeholder\n")
    (tmp_path / "client.key").write_text("key placeholder\n")
    (tmp_path / "home").mkdir()
    return tmp_path


def env_for(tmp: Path, **extra: str) -> Dict[str, str]:
    return {"HOME": str(tmp / "home"), "PATH": "/usr/bin", **extra}


def required_flags(tmp: Path) -> list:
    return [
        "--url",
        "https://cn.example.local",
        "--external-system-id",
        ID,
        "--cert",
        str(tmp / "client.crt"),
        "--key",
        str(tmp / "client.key"),
        "--state-file",
        str(tmp / "state.token"),
    ]


def load(tmp: Path, *argv: str, env: Optional[Dict[str, str]] = None, toml: Optional[str] = None) -> Config:
    args = list(argv)
    if toml is not None:
        path = tmp / "kata-events.toml"
        path.write_text(toml, encoding="utf-8")
        args += ["--config", str(path)]
    return load_run_config(parse(*args), env if env is not None else env_for(tmp))


def fails(tmp: Path, *argv: str, env=None, toml=None) -> UserError:
    with pytest.raises(UserError) as info:
        load(tmp, *argv, env=env, toml=toml)
    return info.value


# -- defaults and precedence -------------------------------------------------------------------------


def test_defaults_come_from_the_option_list(tmp):
    config = load(tmp, *required_flags(tmp))
    for option in opts.OPTIONS:
        if option.default is not None:
            assert getattr(config, option.name) == option.default, option.name
    assert config.ca_file is None and config.pin_sha256 is None and config.config_file is None
    assert config.max_unacked == config.max_events == 10000


def test_max_unacked_follows_max_events_unless_given(tmp):
    assert load(tmp, *required_flags(tmp), "--max-events", "500").max_unacked == 500
    assert load(tmp, *required_flags(tmp), "--max-events", "500", "--max-unacked", "7").max_unacked == 7


def test_state_file_default_is_computed_from_the_id_and_environment(tmp):
    state = pytest.importorskip("kata_events.paths")
    env = env_for(tmp, XDG_STATE_HOME=str(tmp / "xdg"))
    flags = required_flags(tmp)[:-2]  # without --state-file
    config = load(tmp, *flags, env=env)
    assert config.state_file == Path(os.path.abspath(state.default_state_path(ID, env)))
    assert str(config.state_file).startswith(str(tmp / "xdg"))
    assert "state_file" not in describe(config)["sources"]


# key, value in the file (TOML), in the environment, as flags, and the expected typed values.
PRECEDENCE = [
    ("max_events", "max_events = 100", "200", ["--max-events", "300"], (10000, 100, 200, 300)),
    (
        "filter",
        "filter = \"Ioa.Severity == 'High'\"",
        "HostName == 'x'",
        ["--filter", "EventType == 'process'"],
        ("", "Ioa.Severity == 'High'", "HostName == 'x'", "EventType == 'process'"),
    ),
    ("insecure", "insecure = true", "no", ["--insecure"], (False, True, False, True)),
    ("log_format", 'log_format = "text"', "json", ["--log-format", "text"], ("json", "text", "json", "text")),
    (
        "url",
        'url = ["https://file-a", "https://file-b"]',
        "https://env-a,https://env-b",
        ["--url", "https://flag-a"],
        (None, ("https://file-a", "https://file-b"), ("https://env-a", "https://env-b"), ("https://flag-a",)),
    ),
]


@pytest.mark.parametrize("key, toml, env_value, flags, expected", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_flag_beats_environment_beats_file_beats_default(tmp, key, toml, env_value, flags, expected):
    base = required_flags(tmp)
    if key == "url":
        base = base[2:]  # the url comes from the layers under test
    option = opts.BY_NAME[key]
    env = env_for(tmp)
    layers = [
        (None, {}, []),
        (toml, {}, []),
        (toml, {option.env: env_value}, []),
        (toml, {option.env: env_value}, flags),
    ]
    for (file_text, env_extra, flag_list), want in zip(layers, expected):
        if want is None:
            continue
        config = load(
            tmp,
            *base,
            *flag_list,
            env={**env, **env_extra},
            toml=None if file_text is None else file_text + "\n",
        )
        assert getattr(config, key) == want
    source = describe(config)["sources"][key]
    assert source == option.flag


def test_config_file_named_by_environment_and_flag_beats_it(tmp):
    (tmp / "a.toml").write_text("max_events = 11\n")
    (tmp / "b.toml").write_text("max_events = 22\n")
    env = env_for(tmp, KATA_EVENTS_CONFIG=str(tmp / "a.toml"))
    assert load(tmp, *required_flags(tmp), env=env).max_events == 11
    config = load(tmp, *required_flags(tmp), "--config", str(tmp / "b.toml"), env=env)
    assert config.max_events == 22
    assert config.config_file == tmp / "b.toml"


def test_empty_environment_variable_counts_as_unset(tmp):
    env = env_for(tmp, KATA_EVENTS_MAX_EVENTS="", KATA_EVENTS_CA_FILE="")
    config = load(tmp, *required_flags(tmp), env=env, toml="max_events = 5\n")
    assert config.max_events == 5 and config.ca_file is None


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_variables(tmp, text, value):
    assert load(tmp, *required_flags(tmp), env=env_for(tmp, KATA_EVENTS_ONCE=text)).once is value


def test_list_variable_splits_on_commas_and_whitespace(tmp):
    urls = " https://cn1.example.local,https://cn2:8443 \n https://10.0.0.5:443,, "
    env = env_for(tmp, KATA_EVENTS_URL=urls)
    config = load(tmp, *required_flags(tmp)[2:], env=env)
    assert config.url == ("https://cn1.example.local", "https://cn2:8443", "https://10.0.0.5")


def test_single_url_string_in_file_is_a_list_of_one(tmp):
    config = load(tmp, *required_flags(tmp)[2:], toml='url = "https://cn.example.local:443"\n')
    assert config.url == ("https://cn.example.local",)


def test_choice_values_are_case_insensitive(tmp):
    config = load(
        tmp, *required_flags(tmp), env=env_for(tmp, KATA_EVENTS_LOG_LEVEL="DEBUG"), toml='ack = "Lines"\n'
    )
    assert (config.log_level, config.ack) == ("debug", "lines")


# -- every problem at once ---------------------------------------------------------------------------


def test_three_bad_values_from_three_sources_are_reported_together(tmp):
    error = fails(
        tmp,
        *required_flags(tmp),
        "--stats-interval",
        "-1",
        env=env_for(tmp, KATA_EVENTS_MAX_TIMEOUT="999"),
        toml="max_events = 0\n",
    )
    assert error.exit_code == ExitStatus.CONFIG == 78
    assert len(error.problems) == 3
    message = str(error)
    assert "max_events = 0" in message and "from 1 to 72000" in message and "kata-events.toml" in message
    assert "max_timeout = 999" in message and "from 1 to 300" in message
    assert "KATA_EVENTS_MAX_TIMEOUT" in message
    assert "stats_interval = -1" in message and "from 0 to 86400" in message and "--stats-interval" in message


def test_type_errors_say_what_is_allowed(tmp):
    error = fails(
        tmp,
        *required_flags(tmp),
        "--max-events",
        "lots",
        "--log-level",
        "loud",
        env=env_for(tmp, KATA_EVENTS_INSECURE="maybe"),
        toml='once = "sometimes"\nlag_warning = 1.5\n',
    )
    message = str(error)
    assert len(error.problems) == 5, message
    assert 'max_events = "lots" (from --max-events): expected an integer from 1 to 72000' in message
    assert 'log_level = "loud" (from --log-level): expected one of debug, info, warning, error' in message
    assert (
        'insecure = "maybe" (from environment variable KATA_EVENTS_INSECURE): expected true or false'
        in message
    )
    assert 'once = "sometimes"' in message and "lag_warning = 1.5" in message


def test_unknown_key_in_file_suggests_the_closest(tmp):
    error = fails(tmp, *required_flags(tmp), toml="max_event = 5\nstats-interval = 3\n")
    assert error.exit_code == 78
    assert "unknown key 'max_event'" in str(error) and "did you mean max_events?" in str(error)
    assert "unknown key 'stats-interval'" in str(error) and "did you mean stats_interval?" in str(error)


def test_unknown_environment_variable_suggests_the_closest(tmp):
    error = fails(tmp, *required_flags(tmp), env=env_for(tmp, KATA_EVENTS_MAXEVENTS="5", KATA_EVENTS_ZZZ="1"))
    message = str(error)
    assert "KATA_EVENTS_MAXEVENTS: did you mean KATA_EVENTS_MAX_EVENTS?" in message
    assert "KATA_EVENTS_ZZZ" in message and "--help" in message


def test_missing_required_keys_say_how_to_give_them(tmp):
    error = fails(tmp)
    assert error.exit_code == 78
    assert len(error.problems) == 4
    for option in ("url", "external_system_id", "cert", "key"):
        flag, env = opts.BY_NAME[option].flag, opts.BY_NAME[option].env
        assert f"{option} is required: give {flag}, set {env}, or put {option} = ..." in str(error)


def test_toml_syntax_error_gives_line_and_column(tmp):
    error = fails(tmp, *required_flags(tmp), toml="max_events = 5\nfilter = = 'x'\n")
    assert error.exit_code == 78
    assert "kata-events.toml" in str(error) and "line 2" in str(error) and "column" in str(error)


def test_missing_config_file_is_no_input(tmp):
    error = fails(tmp, *required_flags(tmp), "--config", str(tmp / "nope.toml"))
    assert error.exit_code == ExitStatus.NO_INPUT == 66
    assert str(tmp / "nope.toml") in str(error) and "no such file" in str(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file_is_no_input(tmp):
    path = tmp / "secret.toml"
    path.write_text("max_events = 5\n")
    path.chmod(0)
    error = fails(tmp, *required_flags(tmp), "--config", str(path))
    assert error.exit_code == 66 and "permission denied" in str(error) and str(path) in str(error)


def test_missing_certificate_is_no_input_with_the_path(tmp):
    error = fails(tmp, *required_flags(tmp), "--cert", str(tmp / "gone.crt"), "--ca-file", str(tmp))
    assert error.exit_code == 66
    assert f"cert file {tmp / 'gone.crt'}: no such file" in str(error)
    assert f"ca_file file {tmp}: is a directory" in str(error)


def test_files_are_checked_only_once_the_configuration_is_valid(tmp):
    error = fails(tmp, *required_flags(tmp), "--cert", str(tmp / "gone.crt"), "--max-events", "0")
    assert error.exit_code == 78 and "gone.crt" not in str(error)


# -- urls, id, pin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given_url, base, found",
    [
        ("https://cn.example.local", "https://cn.example.local", None),
        ("https://cn.example.local/", "https://cn.example.local", None),
        ("https://10.0.0.5:443", "https://10.0.0.5", None),
        ("https://CN.Example.Local:8443", "https://cn.example.local:8443", None),
        ("https://[fd00::5]:443", "https://[fd00::5]", None),
        (f"https://cn:443/kata/events_api/v1/{ID}/events", "https://cn", ID),
        (f"HTTPS://cn/kata/events_api/v1/{ID}/events/", "https://cn", ID),
        ("https://cn/kata/events_api/v1", "https://cn", None),
    ],
)
def test_url_normalization(given_url, base, found):
    assert normalize_url(given_url) == (base, found)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("http://cn.example.local", "http:// is refused"),
        ("cn.example.local", "write https://cn.example.local (https:// is required)"),
        ("127.0.0.1:8443", "write https://127.0.0.1:8443 (https:// is required)"),
        ("ftp://cn", "must be https://"),
        ("https://user:pw@cn", "certificate"),
        ("https://cn/kata/events_api/v1/x/events?max_events=5", "query"),
        ("https://cn/some/path", "unexpected path"),
        ("https://cn/kata/events_api/v1/not-a-uuid/events", "not a UUID"),
        ("https://cn:99999", "port"),
        ("https://", "host"),
    ],
)
def test_url_refusals(bad, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        normalize_url(bad)


@given(
    host=st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z"),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    with_path=st.booleans(),
    uuid=st.uuids(),
)
def test_url_normalization_property(host, port, with_path, uuid):
    address = host if port is None else f"{host}:{port}"
    path = f"/kata/events_api/v1/{uuid}/events" if with_path else ""
    base, found = normalize_url(f"https://{address}{path}")
    assert base == (f"https://{host}" if port in (None, 443) else f"https://{host}:{port}")
    assert found == (str(uuid) if with_path else None)
    assert normalize_url(base) == (base, None)  # idempotent


def test_full_events_url_provides_the_external_system_id(tmp):
    flags = ["--url", f"https://cn:443/kata/events_api/v1/{ID}/events", *required_flags(tmp)[4:]]
    config = load(tmp, *flags)
    assert config.url == ("https://cn",) and config.external_system_id == ID
    assert "url" in describe(config)["sources"]["external_system_id"]


def test_full_events_url_with_a_different_id_is_refused(tmp):
    error = fails(tmp, *required_flags(tmp), "--url", f"https://cn/kata/events_api/v1/{OTHER_ID}/events")
    assert error.exit_code == 78
    assert ID in str(error) and OTHER_ID in str(error) and "differs" in str(error)


def test_same_id_in_url_and_option_is_fine(tmp):
    config = load(tmp, *required_flags(tmp), "--url", f"https://cn/kata/events_api/v1/{ID.upper()}/events")
    assert config.url == ("https://cn.example.local", "https://cn")


def test_http_url_is_refused_with_its_source(tmp):
    error = fails(tmp, *required_flags(tmp)[2:], env=env_for(tmp, KATA_EVENTS_URL="http://cn.example.local"))
    assert error.exit_code == 78
    assert 'url = "http://cn.example.local" (from environment variable KATA_EVENTS_URL)' in str(error)
    assert "mutual TLS" in str(error)


def test_duplicate_urls_are_tried_once(tmp):
    config = load(tmp, *required_flags(tmp), "--url", "https://cn.example.local:443/")
    assert config.url == ("https://cn.example.local",)


def test_bad_external_system_id(tmp):
    error = fails(tmp, *required_flags(tmp), "--external-system-id", "my-siem")
    assert 'external_system_id = "my-siem" (from --external-system-id): expected a UUID' in str(error)


def test_pin_is_normalized(tmp):
    config = load(tmp, *required_flags(tmp), "--pin-sha256", PIN)
    assert config.pin_sha256 == "ab" * 31 + "cd"
    assert normalize_fingerprint("AB" * 32) == "ab" * 32


@pytest.mark.parametrize("pin", ["ab" * 31, "zz" * 32, "AB:" * 32, "ab:cd" + "ab" * 30])
def test_bad_pins_are_refused(tmp, pin):
    error = fails(tmp, *required_flags(tmp), "--pin-sha256", pin)
    assert "pin_sha256" in str(error) and "64 hex digits" in str(error)


# -- paths ---------------------------------------------------------------------------------------------


def test_relative_paths_in_the_file_are_relative_to_its_directory(tmp, monkeypatch):
    conf = tmp / "etc"
    (conf / "tls").mkdir(parents=True)
    (conf / "tls" / "c.pem").write_text("x")
    (conf / "tls" / "k.pem").write_text("x")
    (conf / "kata.toml").write_text(
        f'url = "https://cn"\nexternal_system_id = "{ID}"\ncert = "tls/c.pem"\nkey = "./tls/k.pem"\n'
        'state_file = "state/kata.token"\n'
    )
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_run_config(parse("--config", "../etc/kata.toml"), env_for(tmp))
    assert config.config_file == conf / "kata.toml"
    assert config.cert == conf / "tls" / "c.pem" and config.key == conf / "tls" / "k.pem"
    assert config.state_file == conf / "state" / "kata.token"


def test_relative_paths_from_flags_and_variables_are_relative_to_the_working_directory(tmp, monkeypatch):
    monkeypatch.chdir(tmp)
    config = load_run_config(
        parse("--url", "https://cn", "--external-system-id", ID, "--cert", "client.crt"),
        env_for(tmp, KATA_EVENTS_KEY="client.key", KATA_EVENTS_STATE_FILE="~/s.token"),
    )
    assert config.cert == tmp / "client.crt" and config.key == tmp / "client.key"
    assert config.state_file == tmp / "home" / "s.token"


# -- one definition, many views ------------------------------------------------------------------------


def test_config_has_exactly_one_attribute_per_option():
    names = [f.name for f in dataclasses.fields(Config)]
    assert names == [o.name for o in opts.OPTIONS] + ["config_file", "sources"]


def test_flags_and_variables_derive_from_the_key():
    option = opts.BY_NAME["max_events"]
    assert (option.flag, option.env) == ("--max-events", "KATA_EVENTS_MAX_EVENTS")
    assert parse() == argparse.Namespace(insecure=None, once=None)  # nothing given, nothing set


def test_json_schema_is_valid_and_closed():
    schema = opts.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(opts.BY_NAME)
    complete = {o.name: o.default for o in opts.OPTIONS if o.default is not None}
    complete.update(url=["https://cn"], external_system_id=ID, cert="c", key="k")
    jsonschema.validate(complete, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**complete, "nope": 1}, schema)


def test_describe_is_json_ready(tmp):
    config = load(tmp, *required_flags(tmp), "--pin-sha256", PIN)
    described = describe(config)
    json.dumps(described)
    assert described["cert"] == str(tmp / "client.crt") and described["url"] == ["https://cn.example.local"]
    assert described["sources"]["cert"] == "--cert"
    # name is every log line's node field, not a field of this one
    assert set(described) == {o.name for o in opts.OPTIONS} - {"name"} | {"config_file", "sources"}
    logs.emit("config", "effective configuration", **described)  # the catalogue declares every key


def test_the_options_module_prints_the_table(capsys):
    assert opts.main([]) == 0
    assert capsys.readouterr().out == opts.markdown_table()
    opts.main(["--schema"])
    assert json.loads(capsys.readouterr().out) == opts.json_schema()


def test_documented_option_table_matches_the_option_list():
    text = CONFIGURATION_DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- options:begin -->\n(.*?)<!-- options:end -->", text, re.S)
    assert match, "docs/configuration.md lacks the options markers"
    assert match.group(1) == opts.markdown_table(), (
        "docs/configuration.md's option table is out of date: replace the block between the markers "
        "with the output of `python -m kata_events.options`"
    )


def test_the_example_config_file_is_valid():
    places = (ROOT, ROOT / "examples")
    example = next((p for p in (d / "kata-events.toml.example" for d in places) if p.exists()), None)
    if example is None:
        pytest.skip("no example config file in this checkout")
    from kata_events.config.sources import tomllib

    data = tomllib.loads(example.read_text(encoding="utf-8"))
    jsonschema.validate(data, opts.json_schema())  # known keys only, every value valid


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, 64 * 1024, 72000, 72001, 300, 301, 2**31 - 1, 2**31, 1024**3, 1024**3 + 1]),
    st.text(max_size=70),
    st.sampled_from(["", "json", "text", "auto", "none", "lines", "debug", "INFO", "x" * 64, "ab:" * 32]),
    st.lists(st.text(max_size=8), max_size=3),
    st.floats(allow_nan=False),
    st.sampled_from([0.0, 0.5, 1.0, 599.5, 600.0, 600.5, -0.1]),
)


@given(name=st.sampled_from([o.name for o in opts.OPTIONS]), value=_ANY_VALUE)
def test_each_problem_is_the_published_schemas_answer_in_the_users_words(name, value):
    option = opts.BY_NAME[name]
    schema_says = jsonschema.Draft202012Validator(option.schema()).is_valid(value)
    if option.type == "int" and isinstance(value, float):
        schema_says = False  # JSON Schema counts 1.0 as an integer; a count of 1.0 is refused here
    origin = config.Origin("config file /etc/k.toml")
    unknown, invalid, missing = config.schema_problems({name: (value, origin)})
    assert unknown == []
    assert (name not in invalid) == schema_says, (name, value, invalid)
    if not schema_says:
        assert invalid[name].startswith(f"{name} = ")
        assert "(from config file /etc/k.toml): expected " + option.allowed_text in invalid[name]
    assert len(missing) == sum(o.required and o.name != name for o in opts.OPTIONS)
