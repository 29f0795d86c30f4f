"""Settings files and users of the embedded Postgres servers: pure helpers, no processes."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

SettingValue = str | int | float | bool


def default_run_as() -> str | None:
    """The user Postgres runs as: ``None`` (this user) unless root.

    As root: ``$WRITEBUS_PG_USER``, else ``postgres`` if that user exists, else ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    explicit = os.environ.get("WRITEBUS_PG_USER")
    if explicit:
        return explicit
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


def managed_settings(*, host: str, port: int, fsync: bool, name: str) -> dict[str, SettingValue]:
    """The ``postgresql.conf`` parameters every embedded server runs with."""
    return {
        "listen_addresses": host,
        "port": port,
        "unix_socket_directories": "",
        "max_connections": 300,
        "wal_level": "replica",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "wal_keep_size": "256MB",
        "hot_standby": True,
        "hot_standby_feedback": True,
        # A replica whose primary went away retries after this long (default 5 s).
        "wal_retrieve_retry_interval": "100ms",
        "synchronous_commit": True,
        "fsync": fsync,
        "cluster_name": name,
        "logging_collector": False,
        "log_destination": "stderr",
        "log_line_prefix": "%m [%p] %q%a ",
    }


def synchronous_standby_settings(standby_name: str) -> dict[str, SettingValue]:
    """The primary's parameters that make ``standby_name`` (the ``application_name`` its
    replication connection gives) its synchronous standby: with ``synchronous_commit = on`` a
    commit returns only once the standby has flushed it, so an acknowledged write survives the
    standby's promotion. Double-quoted in the setting: the name holds a ``-``."""
    return {"synchronous_standby_names": f'"{standby_name}"'}


def quote_setting(value: str) -> str:
    """A value quoted for postgresql.conf."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def format_setting(value: SettingValue) -> str:
    """A parameter value as postgresql.conf spells it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return quote_setting(value)


def postmaster_pid(datadir: Path) -> int | None:
    """The pid in ``postmaster.pid`` (the data directory's lock file), if there is one."""
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(first) if first.isdigit() else None
