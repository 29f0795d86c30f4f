"""Settings from the environment: strict values, named errors, typo warnings, libpq variables."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from writebus.bus.settings import ALL_ENV_VARS, BUS_ENV_VARS, BusSettings
from writebus.client.errors import ConfigError
from writebus.client.settings import (
    ENV_VARS,
    OTHER_KNOWN_VARS,
    EnvReader,
    Settings,
    libpq_conninfo,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
     ("false", False), ("0", False), ("no", False), ("OFF", False), (" off ", False)],
)
def test_booleans_accept_the_usual_spellings(raw: str, value: bool) -> None:
    """true/false, 1/0, yes/no, on/off in any case (surrounding blanks ignored)."""
    assert EnvReader({"X": raw}).flag("X", not value) is value


@pytest.mark.parametrize("raw", ["flase", "ture", "2", "enabled", "nope"])
def test_a_mistyped_boolean_is_an_error_naming_the_variable(raw: str) -> None:
    """Anything else is refused: WRITEBUS_ALLOW_SQL=flase must not leave raw SQL on."""
    with pytest.raises(ConfigError) as info:
        BusSettings.from_env({"WRITEBUS_ALLOW_SQL": raw})
    assert info.value.variable == "WRITEBUS_ALLOW_SQL" and repr(raw) in str(info.value)


def test_unset_and_empty_take_the_default() -> None:
    """An unset or empty variable means the default."""
    assert BusSettings.from_env({}).allow_sql is True
    assert BusSettings.from_env({"WRITEBUS_ALLOW_SQL": ""}).allow_sql is True
    assert BusSettings.from_env({"WRITEBUS_ALLOW_SQL": "off"}).allow_sql is False


@pytest.mark.parametrize(
    ("name", "raw"),
    [("WRITEBUS_MAX_CONCURRENCY", "lots"), ("WRITEBUS_MAX_CONCURRENCY", "0"),
     ("WRITEBUS_MAX_CONCURRENCY", "1.5"), ("WRITEBUS_IDEMPOTENCY_WINDOW", "a day"),
     ("WRITEBUS_IDEMPOTENCY_WINDOW", "-5"), ("WRITEBUS_RPC_TIMEOUT", "0"),
     ("WRITEBUS_CONNECT_TIMEOUT", "5 sec"), ("WRITEBUS_IDEMPOTENCY_WINDOW", "59s"),
     ("WRITEBUS_IDEMPOTENCY_WINDOW", "87601h")],
)
def test_numbers_and_durations_are_validated(name: str, raw: str) -> None:
    """Malformed or out-of-range numbers and durations name their variable."""
    with pytest.raises(ConfigError) as info:
        BusSettings.from_env({name: raw})
    assert info.value.variable == name and name in str(info.value)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5", 5.0), ("0.5", 0.5), ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("24h", 86400.0)],
)
def test_durations_take_seconds_or_a_unit(raw: str, seconds: float) -> None:
    """Durations are seconds, or a number with ms/s/m/h."""
    assert BusSettings.from_env({"WRITEBUS_RPC_TIMEOUT": raw}).rpc_timeout == seconds
    if seconds >= 60:
        window = BusSettings.from_env({"WRITEBUS_IDEMPOTENCY_WINDOW": raw}).idempotency_window
        assert window == seconds


def test_unknown_writebus_variables_are_warned_with_a_guess(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WRITEBUS_* variable nothing reads is logged once, with the likely intended name."""
    with caplog.at_level(logging.WARNING, logger="writebus"):
        Settings.from_env({"WRITEBUS_ALOW_SQL": "false", "WRITEBUS_PREFIX": "x"})
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "WRITEBUS_ALOW_SQL is not a writebus setting and is ignored; "
        "did you mean WRITEBUS_ALLOW_SQL?"
    ]


def test_the_known_names_are_the_names_read() -> None:
    """The bus's variables are among the names the typo check knows, and every known
    WRITEBUS_* name is read somewhere besides the lists themselves (no stale entries)."""
    known = set(ENV_VARS) | OTHER_KNOWN_VARS
    assert set(BUS_ENV_VARS) <= known and set(ALL_ENV_VARS) <= known
    root = Path(__file__).resolve().parents[2]
    sources = [
        p.read_text() for d in ("client", "bus", "writebus", "tests") for p in (root / d).rglob("*.py")
        if p.name != "settings.py" and p.name != "test_settings.py"
    ]
    elsewhere = OTHER_KNOWN_VARS - set(BUS_ENV_VARS)  # the embedded stack's and the tests'
    unread = [n for n in sorted(elsewhere) if not any(f'"{n}"' in src for src in sources)]
    assert unread == []


def test_libpq_variables_stand_in_for_database_url() -> None:
    """Without DATABASE_URL, PGHOST/PGPORT/PGDATABASE/PGUSER/PGPASSWORD make the conninfo, as
    psycopg users expect; the password stays out of repr."""
    env = {"PGHOST": "db.internal", "PGPORT": "6432", "PGDATABASE": "app", "PGUSER": "web",
           "PGPASSWORD": "pw-secret"}
    s = Settings.from_env(env)
    for part in ("host=db.internal", "port=6432", "dbname=app", "user=web"):
        assert part in s.database_url
    assert s.primary_database_url == s.database_url
    assert "pw-secret" not in repr(s)
    assert libpq_conninfo({}) == ""
    assert Settings.from_env({**env, "DATABASE_URL": "postgresql://x/y"}).database_url == (
        "postgresql://x/y"
    )


def test_secrets_stay_out_of_repr() -> None:
    """NATS passwords and database URLs (which may embed one) are not in repr()."""
    s = Settings.from_env({"NATS_USER": "app", "NATS_PASSWORD": "nats-secret",
                           "DATABASE_URL": "postgresql://u:db-secret@h/d",
                           "NATS_URL": "nats://u:url-secret@h:4222"})
    text = repr(s)
    assert "nats-secret" not in text and "db-secret" not in text and "url-secret" not in text


def test_an_empty_nats_url_list_is_an_error() -> None:
    """NATS_URL must name at least one server."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"NATS_URL": " , "})
    assert info.value.variable == "NATS_URL"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FLY_REGION": "lax "}, "FLY_REGION"),
        ({"MY_REGION": "lax..west"}, "MY_REGION"),
        ({"PRIMARY_REGION": "s*d"}, "PRIMARY_REGION"),
        ({"WRITEBUS_PREFIX": "my app"}, "WRITEBUS_PREFIX"),
        ({"NATS_URL": "nats://app:s3cr3t@[::1:1"}, "NATS_URL"),
        ({"NATS_URL": "nats://127.0.0.1:99999"}, "NATS_URL"),
        ({"NATS_URL": "http://127.0.0.1:4222"}, "NATS_URL"),
        ({"NATS_TLS_CA": "/nonexistent/ca.pem"}, "NATS_TLS_CA"),
        ({"NATS_CREDS": "/nonexistent/x.creds"}, "NATS_CREDS"),
        ({"NATS_TLS_KEY": __file__}, "NATS_TLS_CERT"),
    ],
)
def test_names_urls_and_files_are_checked_when_read(env: dict[str, str], variable: str) -> None:
    """A region or prefix that would break a NATS subject, a server URL that is not one, and
    a TLS or credentials file that is not there are one ConfigError naming the variable when
    the settings are read -- they were a traceback after connecting, or a message that named
    nothing -- and the error never quotes a URL's password."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert "s3cr3t" not in str(info.value)


def test_valid_names_and_urls_pass() -> None:
    """Dots join prefix tokens; several servers, with or without a scheme, credentials
    included, are accepted."""
    s = Settings.from_env({"FLY_REGION": "us-east_2", "WRITEBUS_PREFIX": "acme.wb",
                           "NATS_URL": "nats://u:p@a:4222, b:4223,tls://c"})  # fmt: skip
    assert (s.region, s.prefix, len(s.nats_urls)) == ("us-east_2", "acme.wb", 3)


async def test_credentials_without_nkeys_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS_CREDS needs nats-py's nkeys package (the writebus[creds] extra): without it the
    connect says so, naming the variable -- it said 'No module named nkeys' as if the server
    were at fault."""
    import importlib.util

    from writebus.client.connect import connect_nats

    creds = tmp_path / "x.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    settings = Settings.from_env({"NATS_URL": "nats://127.0.0.1:1", "NATS_CREDS": str(creds)})
    with pytest.raises(ConfigError, match="nkeys") as info:
        await connect_nats(settings, name="t", timeout=1)
    assert info.value.variable == "NATS_CREDS"


def test_a_nats_password_with_an_unencoded_hash_is_refused_without_showing_it() -> None:
    """``nats://bus:4711#x@nats:4222`` read as host ``bus``, port 4711 (the password's start,
    then in logs and errors as an address): refused, naming neither."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"NATS_URL": "nats://bus:4711#x@nats:4222"})
    assert info.value.variable == "NATS_URL" and "percent-encode" in str(info.value)
    assert "4711" not in str(info.value)
    assert Settings.from_env({"NATS_URL": "nats://bus:4711%23x@nats:4222"}).nats_urls
    assert Settings.from_env({"NATS_URL": "ws://h:80/ws?t=a@b"}).nats_urls
    with pytest.raises(ConfigError, match="percent-encode"):
        Settings.from_env({"NATS_URL": "wss://alice:4222#pw@nats.example.com"})
