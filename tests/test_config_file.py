"""One schema for flags, HUBBUB_* variables and a TOML file (hubbub.config_file)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hubbub.config import setting_fields
from hubbub.config_file import (
    SCHEMA,
    ConfigError,
    example,
    exposure_warnings,
    mask_url,
    read_env,
    report,
    resolve,
    warnings,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "hubbub.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hubbub.toml"
    path.write_text(text)
    return str(path)


def test_the_example_file_is_generated_from_the_schema_and_complete():
    text = EXAMPLE.read_text()
    assert text == example(), "deploy/hubbub.toml is stale: hubbub config example > it"
    values = tomllib.loads(text)
    assert set(values) == set(SCHEMA)
    assert {"host", "port", "log_level"} | {n for n, *_ in setting_fields()} == set(SCHEMA)
    for key in SCHEMA.values():
        assert values[key.name] == key.default, key.name
        assert f"environment {key.env}" in text and f"flag {key.flag}" in text
    eff = resolve({}, environ={}, config=str(EXAMPLE))
    assert set(eff.sources.values()) == {"file"}


def test_precedence_is_flags_then_environment_then_file_then_defaults(tmp_path):
    path = write(tmp_path, "rate = 5\nburst = 6\nmax_rooms = 7\nport = 9000\n")
    env = {"HUBBUB_BURST": "16", "HUBBUB_MAX_ROOMS": "17"}
    eff = resolve({"max_rooms": 27}, environ=env, config=path)
    assert (eff.settings.rate, eff.settings.burst, eff.settings.max_rooms) == (5.0, 16.0, 27)
    assert eff.port == 9000 and eff.settings.max_message_size == 64 * 1024
    assert eff.sources["rate"] == "file" and eff.sources["burst"] == "env"
    assert eff.sources["max_rooms"] == "flag" and eff.sources["max_message_size"] == "default"
    # HUBBUB_CONFIG names the file when --config is not given.
    eff = resolve({}, environ={"HUBBUB_CONFIG": path})
    assert eff.settings.rate == 5.0 and eff.file == path
    # Without a file, defaults.
    assert resolve({}, environ={}).settings.rate == 20.0


def test_an_unknown_key_names_the_nearest_valid_one(tmp_path):
    path = write(tmp_path, "max_mesage_size = 10\n")
    with pytest.raises(ConfigError) as info:
        resolve({}, environ={}, config=path)
    assert str(info.value) == (
        f"{path}:max_mesage_size: unknown setting (did you mean 'max_message_size'?)"
    )
    path = write(tmp_path, "zzzz = 1\n")
    with pytest.raises(ConfigError, match=r":zzzz: unknown setting$"):
        resolve({}, environ={}, config=path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('rate = "fast"', ":rate: must be a number, got 'fast'"),
        ("compression = 1", ":compression: must be true or false, got 1"),
        ("max_connections = 1.5", ":max_connections: must be a whole number, got 1.5"),
        ("db = 3", ":db: must be a string, got 3"),
        ("[server]\nport = 1", ":server: unknown setting"),
        ("[rate]\nx = 1", ":rate: settings are top-level keys, not tables"),
        ("max_message_size = 0", ":max_message_size: must be positive"),
        ("port = 70000", ":port: must be 0 to 65535"),
        ('log_level = "loud"', ":log_level: must be one of debug, info, warning, error"),
        ('sqlite_synchronous = "maybe"', ":sqlite_synchronous: must be one of OFF"),
        ("rate = ", ": not valid TOML: "),
    ],
)
def test_wrong_values_in_the_file_are_one_line_naming_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        resolve({}, environ={}, config=path)
    assert str(info.value).startswith(path) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_int_is_a_fine_float_and_log_level_is_case_insensitive(tmp_path):
    eff = resolve({}, environ={}, config=write(tmp_path, 'rate = 3\nlog_level = "DEBUG"\n'))
    assert eff.settings.rate == 3.0 and isinstance(eff.settings.rate, float)
    assert eff.log_level == "debug"


def test_a_missing_or_huge_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        resolve({}, environ={}, config=str(tmp_path / "nope.toml"))
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1024 * 1024 + 10) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        resolve({}, environ={}, config=str(big))


def test_environment_values_are_parsed_and_checked():
    env = {
        "HUBBUB_COMPRESSION": "off",
        "HUBBUB_ACCESS_LOG": "Yes",
        "HUBBUB_MAX_CONNECTIONS": "12",
        "HUBBUB_PING_INTERVAL": "2.5",
        "HUBBUB_TOKEN": "not a setting: hubbub chat's",
        "HUBBUB_MAX_CONECTIONS": "3",
        "HUBBUB_NO_SPEEDUPS": "1",
        "HUBBUB_SOMETHING_ELSE": "x",
    }
    values, warnings = read_env(env)
    assert values == {
        "compression": False,
        "access_log": True,
        "max_connections": 12,
        "ping_interval": 2.5,
    }
    assert warnings == [
        "HUBBUB_MAX_CONECTIONS is not a hubbub setting (ignored) (did you mean 'max_connections'?)"
    ]
    for var, text, message in [
        ("HUBBUB_MAX_CONNECTIONS", "many", "HUBBUB_MAX_CONNECTIONS: must be a whole number"),
        ("HUBBUB_COMPRESSION", "maybe", "HUBBUB_COMPRESSION: must be true or false"),
        ("HUBBUB_MAX_MESSAGE_SIZE", "0", "HUBBUB_MAX_MESSAGE_SIZE: must be positive"),
    ]:
        with pytest.raises(ConfigError) as info:
            resolve({}, environ={var: text})
        assert str(info.value).startswith(message)
        assert info.value.source == "env"


def test_the_special_secret_variables_are_the_general_rule():
    eff = resolve(
        {},
        environ={
            "HUBBUB_API_KEY": "k" * 20,
            "HUBBUB_JWT_SECRET": "j" * 40,
            "HUBBUB_METRICS_TOKEN": "m" * 20,
        },
    )
    assert eff.settings.api_key == "k" * 20
    assert eff.settings.jwt_secret == "j" * 40
    assert eff.settings.metrics_token == "m" * 20


def test_a_flag_error_names_the_flag():
    with pytest.raises(ConfigError) as info:
        resolve({"max_message_size": 0}, environ={})
    assert str(info.value) == "argument --max-message-size: must be positive"
    assert info.value.source == "flag"


def test_report_shows_sources_and_masks_secrets(tmp_path):
    path = write(
        tmp_path,
        'jwt_secret = "super-secret-jwt-key-of-32-bytes-or-more"\n'
        'store = "postgresql://app:hunter2@db.example:5432/chat?schema=s&password=pw2"\n'
        'broker = "redis://:redispw@cache:6379/0?prefix=p"\n',
    )
    eff = resolve(
        {"port": 9001},
        environ={"HUBBUB_API_KEY": "the-api-key-value", "HUBBUB_METRICS_TOKEN": ""},
        config=path,
    )
    text = report(eff)
    for secret in ("super-secret", "hunter2", "pw2", "redispw", "the-api-key-value"):
        assert secret not in text
    lines = {line.split(" ", 1)[0]: line for line in text.splitlines() if "=" in line}
    assert lines["jwt_secret"].endswith('= "<set>"  # file')
    assert lines["api_key"].endswith('= "<set>"  # HUBBUB_API_KEY')
    assert lines["metrics_token"].endswith('= ""  # HUBBUB_METRICS_TOKEN')
    assert "app:***@db.example:5432/chat?schema=s&password=***" in lines["store"]
    assert "redis://:***@cache:6379/0?prefix=p" in lines["broker"]
    assert lines["port"].endswith("= 9001  # --port")
    assert lines["rate"].endswith("= 20.0  # default")
    # What it prints is TOML again (secrets aside).
    assert tomllib.loads(text)["port"] == 9001


def test_mask_url_keeps_urls_without_password_as_they_are():
    assert mask_url("redis://cache:6379/0?prefix=p") == "redis://cache:6379/0?prefix=p"
    assert mask_url("postgresql://app@db/chat") == "postgresql://app@db/chat"
    assert mask_url("local") == "local"


def test_warnings_name_unknown_variables_and_readable_secrets(tmp_path):
    path = write(tmp_path, 'metrics_token = "a-token-in-a-file"\n')
    Path(path).chmod(0o644)
    env = {"HUBBUB_RATEE": "3"}
    eff = resolve({}, environ=env, config=path)
    got = warnings(eff, env)
    assert got[0] == "HUBBUB_RATEE is not a hubbub setting (ignored) (did you mean 'rate'?)"
    assert got[1].startswith(f"{path} holds metrics_token and other users can read it")
    Path(path).chmod(0o600)
    assert warnings(eff, {}) == []


def test_proxy_and_host_settings_from_every_source(tmp_path):
    path = write(tmp_path, 'forwarded_allow_ips = "10.0.0.0/8"\nallowed_hosts = "a.example"\n')
    env = {"HUBBUB_FORWARDED_HEADER": "forwarded"}
    eff = resolve({"allowed_hosts": "chat.example.com"}, environ=env, config=path)
    s = eff.settings
    assert (s.forwarded_allow_ips, s.forwarded_header, s.allowed_hosts) == (
        "10.0.0.0/8",
        "forwarded",
        "chat.example.com",
    )
    assert SCHEMA["forwarded_allow_ips"].flag == "--forwarded-allow-ips"
    assert SCHEMA["allowed_hosts"].env == "HUBBUB_ALLOWED_HOSTS"
    bad = write(tmp_path, 'forwarded_allow_ips = "*"\n')
    with pytest.raises(ConfigError) as info:
        resolve({}, environ={}, config=bad)
    assert str(info.value).startswith(f"{bad}:forwarded_allow_ips: has '*'")
    with pytest.raises(ConfigError, match="HUBBUB_ALLOWED_HOSTS: has 'a:1'"):
        resolve({}, environ={"HUBBUB_ALLOWED_HOSTS": "a:1"})


def test_config_check_warns_about_exposure_without_allowed_hosts():
    def check(**flags):
        return exposure_warnings(resolve(flags, environ={}))

    (public,) = check(host="0.0.0.0")
    assert "hubbub listens on 0.0.0.0" in public and "DNS rebinding" in public
    assert check(host="0.0.0.0", allowed_hosts="chat.example.com") == []
    assert check(host="127.0.0.1") == [] and check(host="::1") == []
    (proxied,) = check(host="127.0.0.1", forwarded_allow_ips="127.0.0.1")
    assert "forwarded_allow_ips is set and allowed_hosts is empty" in proxied
    everyone = check(host="127.0.0.1", allowed_hosts="x.example", forwarded_allow_ips="0.0.0.0/0")
    assert len(everyone) == 1 and "any client can choose the address" in everyone[0]
