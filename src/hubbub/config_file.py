"""One schema, four sources: defaults, a TOML file, ``HUBBUB_*`` variables, flags.

Every setting of :class:`hubbub.config.Settings`, plus where ``hubbub serve``
listens (``host``, ``port``) and how much it logs (``log_level``), is one key
of the schema. Each key can be given

* as a flag: ``--max-message-size 131072`` (booleans: ``--compression`` /
  ``--no-compression``);
* as an environment variable: ``HUBBUB_MAX_MESSAGE_SIZE=131072`` (booleans:
  ``true/false``, ``1/0``, ``yes/no``, ``on/off``);
* in a TOML file (``--config hubbub.toml`` or ``HUBBUB_CONFIG``): top-level
  keys, ``max_message_size = 131072``; ``deploy/hubbub.toml`` lists them all
  with their defaults (``hubbub config example`` writes it).

Precedence: flags > environment > file > defaults. A key unknown to the
schema in the file is an error naming the nearest valid key; a value of the
wrong type is a one-line error naming ``FILE:key`` (or the variable).
``hubbub config check [FILE]`` validates and prints the effective settings,
each with its source, secrets masked.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import SettingError, Settings, setting_fields
from .transport.forwarded import proxies
from .transport.hosts import is_loopback_name

#: Settings that are secrets: never printed (``config check`` shows ``<set>``).
SECRETS = frozenset({"jwt_secret", "api_key", "metrics_token"})
#: Settings that are URLs which may hold a password (masked when printed).
URLS = frozenset({"store", "broker"})
#: Query parameters of a store/broker URL whose value is masked too.
SECRET_PARAMS = frozenset({"password", "pass", "passwd", "sslpassword", "token"})
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_PREFIX = "HUBBUB_"
#: The variable naming the config file when --config is not given.
CONFIG_ENV = "HUBBUB_CONFIG"
#: HUBBUB_* variables that are not settings (hubbub chat's token, the file itself,
#: the transport's switch, the test and benchmark tools'). Any other unknown one is
#: warned about only when it looks like a misspelt setting.
OTHER_ENV = frozenset(
    {
        "HUBBUB_TOKEN",
        CONFIG_ENV,
        "HUBBUB_NO_SPEEDUPS",
        "HUBBUB_FUZZ_EXAMPLES",
        "HUBBUB_UPDATE_SCREENSHOTS",
        "HUBBUB_UPDATE_GOLDEN",
        "HUBBUB_TEST_REDIS",
        "HUBBUB_TEST_POSTGRES",
        "HUBBUB_BENCH_SOCKETIO_WORKER",
    }
)
#: Largest config file read (a config file is a few KiB; this bounds a mistake).
MAX_FILE_BYTES = 1024 * 1024
SOURCES = ("default", "file", "env", "flag")


@dataclass(frozen=True)
class Key:
    """One key of the schema."""

    name: str
    type: type
    default: Any
    help: str
    section: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


_SERVE_KEYS = (
    Key("host", str, "0.0.0.0", "Address to listen on.", "listening"),
    Key("port", int, 9502, "TCP port (0 picks a free one).", "listening"),
    Key(
        "log_level",
        str,
        "info",
        f"Logging verbosity: one of {', '.join(LOG_LEVELS)}.",
        "listening",
    ),
)

#: Where each Settings field's section starts (the order of config.py).
_SECTION_STARTS = {
    "max_message_size": "server limits",
    "db": "the chat product (hubbub.v1)",
    "auth": "identity",
    "poll_timeout": "fallback transports",
    "metrics_token": "operations",
}


def schema() -> list[Key]:
    """Every key, in the order of the example file."""
    keys = list(_SERVE_KEYS)
    section = "server limits"
    for name, typ, default, text in setting_fields():
        section = _SECTION_STARTS.get(name, section)
        keys.append(Key(name, typ, default, text, section))
    return keys


SCHEMA: dict[str, Key] = {k.name: k for k in schema()}


class ConfigError(ValueError):
    """A value the schema refuses; ``str()`` is one line naming where it came from."""

    def __init__(self, where: str, problem: str, *, source: str = "file") -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
        self.source = source


@dataclass
class Effective:
    """The settings ``hubbub serve`` runs with, and where each value came from."""

    host: str
    port: int
    log_level: str
    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)
    file: str | None = None

    def value(self, name: str) -> Any:
        if name in ("host", "port", "log_level"):
            return getattr(self, name)
        return getattr(self.settings, name)


# -- reading each source --------------------------------------------------------


def suggest(name: str) -> str:
    """`` (did you mean 'x'?)`` for the nearest valid key, or ``""``."""
    close = difflib.get_close_matches(name, list(SCHEMA), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_file(path: str) -> dict[str, Any]:
    """The keys of a TOML config file, checked against the schema (ConfigError)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read the config file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, f"config file larger than {MAX_FILE_BYTES} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    out = {}
    for name, value in raw.items():
        where = f"{path}:{name}"
        if name not in SCHEMA:
            raise ConfigError(where, f"unknown setting{suggest(name)}")
        out[name] = check_value(SCHEMA[name], value, where)
    return out


def check_value(key: Key, value: Any, where: str, source: str = "file") -> Any:
    """A TOML value of the key's type (an int is a fine float), else ConfigError."""
    if isinstance(value, dict):
        raise ConfigError(where, "settings are top-level keys, not tables", source=source)
    if key.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, got {value!r}", source=source)
        return value
    if key.type is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"must be a string, got {value!r}", source=source)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(where, f"must be a number, got {value!r}", source=source)
    if key.type is int:
        if not isinstance(value, int):
            raise ConfigError(where, f"must be a whole number, got {value!r}", source=source)
        return value
    return float(value)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_text(key: Key, text: str, where: str, source: str = "env") -> Any:
    """A value written as text (an environment variable) for ``key``."""
    if key.type is str:
        return text
    if key.type is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(where, f"must be true or false, got {text!r}", source=source)
    try:
        number = key.type(text.strip())
    except ValueError:
        kind = "a whole number" if key.type is int else "a number"
        raise ConfigError(where, f"must be {kind}, got {text!r}", source=source) from None
    return number


def read_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The settings given as ``HUBBUB_*`` variables, and warnings for unknown ones."""
    out: dict[str, Any] = {}
    warnings = []
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var in OTHER_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        key = SCHEMA.get(name)
        if key is None:
            hint = suggest(name)
            if hint:  # a misspelt setting; other HUBBUB_* variables belong to tools
                warnings.append(f"{var} is not a hubbub setting (ignored){hint}")
            continue
        out[name] = parse_text(key, text, var)
    return out, warnings


# -- combining them ---------------------------------------------------------------


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config: str | None = None,
) -> Effective:
    """The effective settings: ``flags`` (the keys given on the command line) over
    the environment over the file (``config``, else ``$HUBBUB_CONFIG``) over the
    defaults. Raises ConfigError (or SettingError, naming a flag) when a value is
    refused."""
    env = os.environ if environ is None else environ
    path = config if config is not None else (env.get(CONFIG_ENV) or None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        layers.append(("file", read_file(path)))
    layers.append(("env", read_env(env)[0]))
    layers.append(("flag", dict(flags)))
    values: dict[str, Any] = {}
    sources = {name: "default" for name in SCHEMA}
    for source, given in layers:
        for name, value in given.items():
            values[name] = value
            sources[name] = source
    _check_serve_keys(values, sources, path)
    settings_kw = {n: v for n, v in values.items() if n not in ("host", "port", "log_level")}
    try:
        settings = Settings(**settings_kw)
    except SettingError as exc:
        raise _located(exc.field, exc.problem, sources.get(exc.field, "default"), path) from None
    return Effective(
        host=values.get("host", SCHEMA["host"].default),
        port=values.get("port", SCHEMA["port"].default),
        log_level=values.get("log_level", SCHEMA["log_level"].default),
        settings=settings,
        sources=sources,
        file=path,
    )


def _check_serve_keys(values: dict[str, Any], sources: dict[str, str], path: str | None) -> None:
    port = values.get("port")
    if port is not None and not 0 <= port <= 65535:
        raise _located(
            "port", f"must be 0 to 65535 (0 picks a free one), got {port}", sources["port"], path
        )
    level = values.get("log_level")
    if level is not None:
        if level.lower() not in LOG_LEVELS:
            raise _located(
                "log_level",
                f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}",
                sources["log_level"],
                path,
            )
        values["log_level"] = level.lower()


def _located(name: str, problem: str, source: str, path: str | None) -> ConfigError:
    key = SCHEMA[name]
    where = {
        "file": f"{path}:{name}",
        "env": key.env,
        "flag": f"argument {key.flag}",
        "default": f"setting {name}",
    }[source]
    return ConfigError(where, problem, source=source)


def warnings(eff: Effective, environ: Mapping[str, str] | None = None) -> list[str]:
    """What an operator should know but that does not stop the server: unknown
    ``HUBBUB_*`` variables, secrets in a file other users can read."""
    env = os.environ if environ is None else environ
    out = read_env(env)[1]
    secrets = sorted(n for n in SECRETS if eff.sources.get(n) == "file" and eff.value(n))
    if eff.file and secrets:
        try:
            mode = os.stat(eff.file).st_mode
        except OSError:
            mode = 0
        if mode & 0o044:
            out.append(
                f"{eff.file} holds {', '.join(secrets)} and other users can read it "
                f"(chmod 600 it, or give them as HUBBUB_* variables)"
            )
    return out


def exposure_warnings(eff: Effective) -> list[str]:
    """What ``hubbub config check`` says about exposing these settings: no
    ``allowed_hosts`` on a public address or behind proxies (DNS rebinding,
    docs/security.md), a proxy network that takes in every address."""
    s = eff.settings
    out = []
    public = not is_loopback_name(eff.host.strip("[]").lower())
    if not s.allowed_hosts and public:
        out.append(
            f"hubbub listens on {eff.host} (other machines can reach it) and allowed_hosts "
            "is empty: it answers any Host name, so a page whose name is re-pointed at "
            "this address (DNS rebinding) counts as its own origin; list the names "
            'clients use (allowed_hosts = "chat.example.com")'
        )
    elif not s.allowed_hosts and s.forwarded_allow_ips:
        out.append(
            "forwarded_allow_ips is set and allowed_hosts is empty: every Host name the "
            "proxies pass on is answered; list the public names (allowed_hosts)"
        )
    networks = proxies(s.forwarded_allow_ips, s.forwarded_header).networks
    for net in networks:
        if net.prefixlen == 0:
            out.append(
                f"forwarded_allow_ips has {net}: every peer is a trusted proxy, so any "
                "client can choose the address hubbub sees; list only the proxies"
            )
    return out


# -- showing them -------------------------------------------------------------------


def mask_url(url: str) -> str:
    """``url`` with its password (and password-like query parameters) masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL, not shown>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            masked = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def shown(name: str, value: Any) -> str:
    """A value as ``config check`` prints it: TOML syntax, secrets masked."""
    if name in SECRETS:
        return '"<set>"' if value else '""'
    if name in URLS and isinstance(value, str):
        value = mask_url(value)
    return toml_value(value)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return repr(value)  # never a default; config check shows what was refused
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return f'"{text}"'


def report(eff: Effective) -> str:
    """The effective settings, one ``key = value  # source`` line each (valid TOML)."""
    lines = []
    if eff.file:
        lines.append(f"# config file: {eff.file}")
    width = max(len(k) for k in SCHEMA)
    for key in SCHEMA.values():
        value = shown(key.name, eff.value(key.name))
        source = eff.sources.get(key.name, "default")
        where = {"env": key.env, "flag": key.flag}.get(source, source)
        lines.append(f"{key.name:<{width}} = {value}  # {where}")
    return "\n".join(lines) + "\n"


def example() -> str:
    """``deploy/hubbub.toml``: every key, its help and its default."""
    out = [
        "# hubbub configuration: every setting with its default.",
        "# Generated from the schema by `hubbub config example`; check a file with",
        "# `hubbub config check FILE`. Precedence: flags > HUBBUB_* environment",
        "# variables > this file > defaults. Secrets (jwt_secret, api_key,",
        "# metrics_token) are better given as HUBBUB_JWT_SECRET etc. than kept here.",
    ]
    section = None
    for key in SCHEMA.values():
        if key.section != section:
            section = key.section
            out += ["", f"# -- {section} " + "-" * max(0, 72 - len(section))]
        out.append("")
        out += _wrap(key.help)
        out.append(f"# flag {key.flag}, environment {key.env}")
        out.append(f"{key.name} = {toml_value(key.default)}")
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 78) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(" ".join(text.split()), width - 2)]
