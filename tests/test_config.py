"""Settings: every value hubbub cannot run with is refused with its name."""

from __future__ import annotations

import math

import pytest

from hubbub.config import SettingError, Settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sqlite_synchronous": "bogus"}, "sqlite_synchronous must be one of OFF, NORMAL, FULL, "),
        ({"max_message_size": 0}, "max_message_size must be positive"),
        ({"ping_interval": -1.0}, "ping_interval must not be negative"),
        ({"ping_timeout": math.nan}, "ping_timeout must be a finite number"),
        ({"shutdown_timeout": math.inf}, "shutdown_timeout must be a finite number"),
        ({"max_connections": 1.5}, "max_connections must be a whole number"),
        ({"compression": "yes"}, "compression must be true or false"),
        ({"db": ""}, "db must name a file"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(changes, message):
    with pytest.raises(SettingError) as info:
        Settings(**changes)
    assert str(info.value).startswith(message)
    assert info.value.field == next(iter(changes))
    assert isinstance(info.value, ValueError)


def test_sqlite_synchronous_is_case_insensitive_and_normalised():
    assert Settings(sqlite_synchronous="full").sqlite_synchronous == "FULL"
    assert Settings().sqlite_synchronous == "NORMAL"


def test_access_log_is_on_by_default():
    assert Settings().access_log is True
    assert Settings(access_log=False).access_log is False


def test_tls_needs_both_files_and_allowed_origins_are_checked():
    with pytest.raises(SettingError, match="keyfile is needed too"):
        Settings(certfile="cert.pem")
    with pytest.raises(SettingError, match="certfile is needed too"):
        Settings(keyfile="key.pem")
    with pytest.raises(SettingError) as info:
        Settings(allowed_origins="example.com")
    assert info.value.field == "allowed_origins"
    assert Settings(allowed_origins="https://a.example, *").allowed_origins


def test_new_limits_have_safe_defaults():
    s = Settings()
    assert s.seed_rate == 0  # the seed's behaviour unless asked
    assert s.allowed_origins == ""  # own origin only
    assert s.forwarded_allow_ips == ""  # no proxy's header believed
    assert s.forwarded_header == "x-forwarded-for"
    assert s.allowed_hosts == ""  # any name, but DNS names refused on loopback (hosts.py)
    assert s.max_connections_per_ip > 0 and s.max_pending_handshakes > 0
