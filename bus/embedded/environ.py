"""The embedded stack's servers are its own: the user's client settings stay away from them.

libpq reads ``PG*`` variables for every connection a process makes (``PGSSLMODE=require``,
common for a managed database, made every probe of the embedded server -- which has no SSL --
fail until start-up timed out), and a bus node reads ``NATS_*`` ones (``NATS_TLS_CA`` for a
server without TLS). The stack names its servers by explicit URLs; these are not for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Prefixes of the variables that configure clients: libpq's and writebus' NATS settings.
CLIENT_PREFIXES = ("PG", "NATS_")

#: What every URL of the stack's Postgres servers names, so that libpq's variables meant for
#: the user's own databases (``PGSSLMODE=require``: these have no SSL, unless a test gave
#: them some -- ``prefer`` takes it then) do not apply to them, in any process.
PINNED = "sslmode=prefer&gssencmode=disable&target_session_attrs=any"


def scrubbed(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the client settings (:data:`CLIENT_PREFIXES`)."""
    return {k: v for k, v in environ.items() if not k.startswith(CLIENT_PREFIXES)}


def forget_client_settings(*, keep_libpq: bool = False) -> list[str]:
    """Drop the client settings from this process's environment (a command that runs its own
    servers, or the test suite); return their names. ``keep_libpq`` keeps ``PG*``."""
    prefixes = ("NATS_",) if keep_libpq else CLIENT_PREFIXES
    names = sorted(k for k in os.environ if k.startswith(prefixes))
    for name in names:
        del os.environ[name]
    return names
