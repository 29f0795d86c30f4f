"""One frozen settings object, read from the environment in one place.

Every environment variable writebus reads is listed in :data:`ENV_VARS`; the deployment files
(``docker-compose.yml``, ``fly.toml``) are tested against this list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Self

from writebus.client.region import my_region, primary_region

#: Every environment variable read by :meth:`Settings.from_env`, with its meaning.
ENV_VARS: dict[str, str] = {
    "PRIMARY_REGION": "region holding the Postgres primary (default 'local')",
    "MY_REGION": "this node's region (default 'local')",
    "FLY_REGION": "this node's region, set by Fly.io; wins over MY_REGION",
    "NATS_URL": "comma-separated NATS server URLs (default nats://127.0.0.1:4222)",
    "DATABASE_URL": "the local database: the replica outside the primary region",
    "PRIMARY_DATABASE_URL": "the primary database, for bus workers (default DATABASE_URL)",
    "WRITEBUS_PREFIX": "subject prefix (default 'writebus')",
    "WRITEBUS_PROCEDURES": "'module:attribute' naming a writebus.Procedures registry to serve",
    "WRITEBUS_REPLICA_ID": "this region node's replica id in progress broadcasts",
    "WRITEBUS_MAX_CONCURRENCY": "writes a bus worker runs at once (default 32)",
    "WRITEBUS_ALLOW_SQL": "'false' switches raw SQL over the bus off: procedures only",
    "WRITEBUS_IDEMPOTENCY_WINDOW": "seconds applied request ids are remembered (default 86400)",
    "WRITEBUS_LOG_FORMAT": "'json' (default when not a terminal) or 'console'",
    "WRITEBUS_LOG_LEVEL": "log level (default 'info')",
    "WRITEBUS_READY_FILE": "file a bus node creates once it serves (for supervisors and tests)",
    "NATS_USER": "NATS user name",
    "NATS_PASSWORD": "NATS password",
    "NATS_CREDS": "path to a NATS credentials file",
    "NATS_TLS_CA": "CA bundle to verify the NATS server's certificate",
    "NATS_TLS_CERT": "client certificate for NATS (mutual TLS)",
    "NATS_TLS_KEY": "client key for NATS (mutual TLS)",
}

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Connection and behaviour settings shared by the bus service and the client.

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
    max_concurrency: int = 32
    allow_sql: bool = True
    idempotency_window: float = 24 * 3600.0
    ready_file: str | None = None
    nats_user: str | None = field(default=None, repr=False)
    nats_password: str | None = field(default=None, repr=False)
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    rpc_timeout: float = 5.0
    replication_timeout: float = 5.0
    heartbeat_interval: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Self:
        """Read every setting from the environment (see :data:`ENV_VARS`); keywords override."""
        env = os.environ if environ is None else environ
        database_url = env.get("DATABASE_URL", "")
        values: dict[str, object] = dict(
            region=my_region(env),
            primary_region=primary_region(env),
            nats_urls=tuple(
                u.strip() for u in env.get("NATS_URL", DEFAULT_NATS_URL).split(",") if u.strip()
            ),
            database_url=database_url,
            primary_database_url=env.get("PRIMARY_DATABASE_URL", "") or database_url,
            prefix=env.get("WRITEBUS_PREFIX", "writebus"),
            procedures=env.get("WRITEBUS_PROCEDURES", ""),
            replica_id=env.get("WRITEBUS_REPLICA_ID", ""),
            max_concurrency=int(env.get("WRITEBUS_MAX_CONCURRENCY", "32")),
            allow_sql=_flag(env.get("WRITEBUS_ALLOW_SQL"), True),
            idempotency_window=float(env.get("WRITEBUS_IDEMPOTENCY_WINDOW", "86400")),
            ready_file=env.get("WRITEBUS_READY_FILE") or None,
            nats_user=env.get("NATS_USER") or None,
            nats_password=env.get("NATS_PASSWORD") or None,
            nats_creds=env.get("NATS_CREDS") or None,
            nats_tls_ca=env.get("NATS_TLS_CA") or None,
            nats_tls_cert=env.get("NATS_TLS_CERT") or None,
            nats_tls_key=env.get("NATS_TLS_KEY") or None,
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def is_primary(self) -> bool:
        """True when this node runs in the primary region."""
        return self.region == self.primary_region

    def replace(self, **changes: object) -> Self:
        """A copy with some settings changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
