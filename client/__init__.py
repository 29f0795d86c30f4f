"""writebus client: read from the local replica, write through the bus, read your writes.

What an application uses is exported here (and again from ``writebus``). Tracker plumbing, the
wire Structs and :func:`~writebus.client.procedures.load_procedures` stay importable from their
own modules.

::

    from writebus import Database, Settings

    async with Database(Settings.from_env()) as db:
        await db.execute("INSERT INTO notes(body) VALUES (%s)", ["hi"])
        rows = await db.fetch("SELECT body FROM notes")   # sees the insert
"""

from writebus.client.db import Database, connect
from writebus.client.errors import (
    ConfigError,
    ConnectError,
    DatabaseTimeoutError,
    DisconnectedError,
    ForbiddenError,
    IdempotencyKeyReusedError,
    LimitError,
    NoWorkerError,
    Outcome,
    OutcomeUnknownError,
    ProcedureError,
    ProtocolError,
    ReplicationTimeoutError,
    ResultNotSentError,
    RowFactoryError,
    RpcTimeoutError,
    StaleReadError,
    TrackerError,
    TransactionEndedError,
    UnavailableError,
    UnrecordedOutcomeError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.lsn import format_lsn, parse_lsn
from writebus.client.middleware import WritebusASGIMiddleware, WritebusWSGIMiddleware
from writebus.client.procedures import Procedures
from writebus.client.protocol import Statement
from writebus.client.region import is_primary, my_region, primary_region
from writebus.client.results import StatementOutcome, Timings, WriteResult
from writebus.client.retry import NO_RETRY, RetryPolicy
from writebus.client.settings import Settings
from writebus.client.sync import SyncDatabase
from writebus.client.tokens import Session, session
from writebus.client.writes import new_request_id

__all__ = [
    "NO_RETRY",
    "ConfigError",
    "ConnectError",
    "DatabaseTimeoutError",
    "Database",
    "DisconnectedError",
    "ForbiddenError",
    "IdempotencyKeyReusedError",
    "LimitError",
    "NoWorkerError",
    "Outcome",
    "OutcomeUnknownError",
    "ProcedureError",
    "Procedures",
    "ProtocolError",
    "ReplicationTimeoutError",
    "RetryPolicy",
    "RpcTimeoutError",
    "Session",
    "Settings",
    "ResultNotSentError",
    "RowFactoryError",
    "StaleReadError",
    "Statement",
    "StatementOutcome",
    "SyncDatabase",
    "Timings",
    "TrackerError",
    "TransactionEndedError",
    "UnavailableError",
    "UnrecordedOutcomeError",
    "WriteBusError",
    "WritebusASGIMiddleware",
    "WritebusWSGIMiddleware",
    "WriteRejectedError",
    "WriteResult",
    "connect",
    "format_lsn",
    "is_primary",
    "my_region",
    "new_request_id",
    "parse_lsn",
    "primary_region",
    "session",
]
