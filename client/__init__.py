"""writebus client: read from the local replica, write through the bus, read your writes.

::

    from writebus.client import Database, Settings

    async with Database(Settings.from_env()) as db:
        await db.execute("INSERT INTO notes(body) VALUES (%s)", ["hi"])
        rows = await db.fetch("SELECT body FROM notes")   # sees the insert
"""

from writebus.client.db import Database, connect, new_request_id
from writebus.client.errors import (
    CommitUnknownError,
    NoWorkerError,
    ProcedureError,
    ProtocolError,
    ReplicationTimeoutError,
    RpcTimeoutError,
    TrackerError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.lsn import format_lsn, parse_lsn
from writebus.client.procedures import Procedures, load_procedures
from writebus.client.protocol import Statement
from writebus.client.region import is_primary, my_region, primary_region
from writebus.client.results import StatementOutcome, Timings, WriteResult
from writebus.client.retry import NO_RETRY, RetryPolicy
from writebus.client.settings import Settings
from writebus.client.tracker import LsnTracker, acquire_tracker, release_tracker

__all__ = [
    "CommitUnknownError",
    "NO_RETRY",
    "Database",
    "LsnTracker",
    "NoWorkerError",
    "ProcedureError",
    "Procedures",
    "ProtocolError",
    "ReplicationTimeoutError",
    "RetryPolicy",
    "RpcTimeoutError",
    "Settings",
    "Statement",
    "StatementOutcome",
    "Timings",
    "TrackerError",
    "UnavailableError",
    "WriteBusError",
    "WriteRejectedError",
    "WriteResult",
    "acquire_tracker",
    "connect",
    "format_lsn",
    "is_primary",
    "load_procedures",
    "my_region",
    "new_request_id",
    "parse_lsn",
    "primary_region",
    "release_tracker",
]
