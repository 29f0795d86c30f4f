"""One frozen settings object, read from the environment in one place.

Every environment variable the library reads is listed in :data:`ENV_VARS` (the bus adds its own
in :mod:`writebus.bus.settings`); the deployment files are tested against these lists. Values are
parsed strictly: a malformed boolean, number or duration raises
:class:`~writebus.client.errors.ConfigError` naming the variable -- a security switch such as
``WRITEBUS_ALLOW_SQL=flase`` must never fail open.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

from writebus.client.errors import ConfigError
from writebus.client.region import my_region, primary_region
from writebus.client.settings_checks import (
    check_files,
    check_nats_urls,
    check_prefix,
    check_region,
    region_variable,
    tls_context,
)

log = logging.getLogger("writebus.client.settings")

#: Every environment variable read by :meth:`Settings.from_env`, with its meaning.
ENV_VARS: dict[str, str] = {
    "PRIMARY_REGION": "region holding the Postgres primary (default 'local')",
    "MY_REGION": "this node's region (default 'local')",
    "FLY_REGION": "this node's region, set by Fly.io; wins over MY_REGION",
    "NATS_URL": "comma-separated NATS server URLs (default nats://127.0.0.1:4222)",
    "DATABASE_URL": "the local database: the replica outside the primary region "
    "(unset: libpq's PGHOST, PGDATABASE, ... variables)",
    "PRIMARY_DATABASE_URL": "the primary database, for bus workers (default DATABASE_URL)",
    "WRITEBUS_PREFIX": "subject prefix (default 'writebus')",
    "WRITEBUS_PROCEDURES": "'module:attribute' naming a writebus.Procedures registry to serve",
    "WRITEBUS_REPLICA_ID": "this region node's replica id in progress broadcasts",
    "WRITEBUS_CONNECT_TIMEOUT": "seconds to reach NATS and the database at start-up (default 5)",
    "WRITEBUS_RPC_TIMEOUT": "seconds a write may take to be answered, retries included "
    "(default 5)",
    "WRITEBUS_REPLICATION_TIMEOUT": "seconds to wait for the local replica to replay (default 5)",
    "NATS_USER": "NATS user name",
    "NATS_PASSWORD": "NATS password",
    "NATS_CREDS": "path to a NATS credentials file",
    "NATS_TLS_CA": "CA bundle to verify the NATS server's certificate",
    "NATS_TLS_CERT": "client certificate for NATS (mutual TLS)",
    "NATS_TLS_KEY": "client key for NATS (mutual TLS)",
}

#: ``WRITEBUS_*`` variables read elsewhere (the bus service, the embedded stack, the tests), so
#: the typo check below does not flag them.
OTHER_KNOWN_VARS = frozenset(
    {
        "WRITEBUS_MAX_CONCURRENCY",
        "WRITEBUS_ALLOW_SQL",
        "WRITEBUS_IDEMPOTENCY_WINDOW",
        "WRITEBUS_READY_FILE",
        "WRITEBUS_LOG_FORMAT",
        "WRITEBUS_LOG_LEVEL",
        "WRITEBUS_REQUEST_LOG_LEVEL",
        "WRITEBUS_HTTP_ADDR",
        "WRITEBUS_FENCE_WAIT",
        "WRITEBUS_GROUP_CONNECTIONS",
        "WRITEBUS_GROUP_MAX",
        "WRITEBUS_GROUP_ADAPTIVE",
        "WRITEBUS_EVENT_LOOP",
        "WRITEBUS_PG_BIN",
        "WRITEBUS_PG_USER",
        "WRITEBUS_PG_CACHE",
        "WRITEBUS_NATS_SERVER",
        "WRITEBUS_TEST_BACKEND",
        "WRITEBUS_TEST_DELAY_MS",
        "WRITEBUS_FAKE_DATABASE_URL",
    }
)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

#: libpq's environment variables and the connection keywords they stand for.
PG_ENV: dict[str, str] = {
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGDATABASE": "dbname",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGPASSFILE": "passfile",
    "PGSERVICE": "service",
    "PGOPTIONS": "options",
    "PGAPPNAME": "application_name",
    "PGSSLMODE": "sslmode",
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class EnvReader:
    """Typed, strict access to one environment mapping. Every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str = "") -> str:
        """The value, or ``default`` when unset or empty."""
        return self.env.get(name) or default

    def optional(self, name: str) -> str | None:
        """The value, or None when unset or empty."""
        return self.env.get(name) or None

    def flag(self, name: str, default: bool) -> bool:
        """``true/false/1/0/yes/no/on/off`` in any case; anything else is an error."""
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(
            f"{name}={raw!r} is not a boolean: use true/false, 1/0, yes/no or on/off",
            variable=name,
        )

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        """A whole number at least ``minimum``."""
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number", variable=name) from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be at least {minimum}", variable=name)
        return value

    def seconds(self, name: str, default: float, *, positive: bool = True) -> float:
        """A duration: seconds (``"5"``, ``"0.5"``) or with a unit (``"500ms"``, ``"2m"``)."""
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        match = _DURATION.match(raw)
        if match is None:
            raise ConfigError(
                f"{name}={raw!r} is not a duration: use seconds (5, 0.5) or 500ms, 30s, 2m, 1h",
                variable=name,
            )
        value = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
        if positive and value <= 0:
            raise ConfigError(f"{name}={raw!r} must be more than zero", variable=name)
        return value


def libpq_conninfo(env: Mapping[str, str]) -> str:
    """A conninfo string from libpq's ``PG*`` variables in ``env``, or ``""`` if none is set."""
    from psycopg.conninfo import make_conninfo

    params = {kw: env[var] for var, kw in PG_ENV.items() if env.get(var)}
    return make_conninfo(**params) if params else ""


def unknown_variables(env: Mapping[str, str], known: frozenset[str]) -> list[tuple[str, str | None]]:
    """``WRITEBUS_*`` names in ``env`` that nothing reads, each with its likely intended name."""
    out: list[tuple[str, str | None]] = []
    for name in sorted(env):
        if name.startswith("WRITEBUS_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            out.append((name, close[0] if close else None))
    return out


def known_variables() -> frozenset[str]:
    """Every environment variable name writebus reads."""
    return frozenset(ENV_VARS) | OTHER_KNOWN_VARS


def warn_unknown_variables(env: Mapping[str, str]) -> list[str]:
    """Log one warning per unknown ``WRITEBUS_*`` variable; return the warnings."""
    warnings = []
    for name, guess in unknown_variables(env, known_variables()):
        hint = f"; did you mean {guess}?" if guess else ""
        text = f"{name} is not a writebus setting and is ignored{hint}"
        log.warning(text)
        warnings.append(text)
    return warnings


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Connection and behaviour settings of the client (the bus extends them).

    Build one with :meth:`from_env` or directly with keyword arguments; derive variants with
    :meth:`replace`. Durations are in seconds.
    """

    region: str = "local"
    primary_region: str = "local"
    # URLs may embed credentials: keep them out of repr (and so out of logs and tracebacks).
    nats_urls: tuple[str, ...] = field(default=(DEFAULT_NATS_URL,), repr=False)
    database_url: str = field(default="", repr=False)
    primary_database_url: str = field(default="", repr=False)
    prefix: str = "writebus"
    procedures: str = ""
    replica_id: str = ""
    nats_user: str | None = field(default=None, repr=False)
    nats_password: str | None = field(default=None, repr=False)
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    connect_timeout: float = 5.0
    rpc_timeout: float = 5.0
    replication_timeout: float = 5.0
    heartbeat_interval: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Read every setting from the environment (see :data:`ENV_VARS`); keywords override.

        Raises :class:`~writebus.client.errors.ConfigError` for a malformed value, and logs a
        warning for each ``WRITEBUS_*`` variable nothing reads (a likely typo).
        """
        env = os.environ if environ is None else environ
        values = cls._read_env(EnvReader(env))
        values.update(overrides)
        warn_unknown_variables(env)
        return cls(**values)

    @classmethod
    def _read_env(cls, r: EnvReader) -> dict[str, Any]:
        env = r.env
        database_url = r.text("DATABASE_URL") or libpq_conninfo(env)
        urls = tuple(u.strip() for u in r.text("NATS_URL", DEFAULT_NATS_URL).split(",") if u.strip())
        if not urls:
            raise ConfigError("NATS_URL names no server", variable="NATS_URL")
        check_files(env, "NATS_CREDS", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY")
        # Built once here, so that files that do not load are one line naming the variable.
        tls_context(r.optional("NATS_TLS_CA"), r.optional("NATS_TLS_CERT"),
                    r.optional("NATS_TLS_KEY"))  # fmt: skip
        if r.optional("NATS_PASSWORD") is not None and r.optional("NATS_USER") is None:
            raise ConfigError(
                "NATS_PASSWORD is set without NATS_USER: set both, or neither",
                variable="NATS_USER",
            )
        return dict(
            region=check_region(my_region(env), region_variable(env)),
            primary_region=check_region(primary_region(env), "PRIMARY_REGION"),
            nats_urls=check_nats_urls(urls),
            database_url=database_url,
            primary_database_url=r.text("PRIMARY_DATABASE_URL") or database_url,
            prefix=check_prefix(r.text("WRITEBUS_PREFIX", "writebus")),
            procedures=r.text("WRITEBUS_PROCEDURES"),
            replica_id=r.text("WRITEBUS_REPLICA_ID"),
            nats_user=r.optional("NATS_USER"),
            nats_password=r.optional("NATS_PASSWORD"),
            nats_creds=r.optional("NATS_CREDS"),
            nats_tls_ca=r.optional("NATS_TLS_CA"),
            nats_tls_cert=r.optional("NATS_TLS_CERT"),
            nats_tls_key=r.optional("NATS_TLS_KEY"),
            connect_timeout=r.seconds("WRITEBUS_CONNECT_TIMEOUT", 5.0),
            rpc_timeout=r.seconds("WRITEBUS_RPC_TIMEOUT", 5.0),
            replication_timeout=r.seconds("WRITEBUS_REPLICATION_TIMEOUT", 5.0),
        )

    @property
    def is_primary(self) -> bool:
        """True when this node runs in the primary region."""
        return self.region == self.primary_region

    def replace(self, **changes: Any) -> Self:
        """A copy with some settings changed."""
        return replace(self, **changes)
