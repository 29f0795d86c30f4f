"""Typed errors. Each class says what the caller can do about it and carries the data to do it.

``WriteBusError``
 ├── ``NoWorkerError``         no bus worker serves writes (retryable: a deploy may be under way)
 ├── ``RpcTimeoutError``       no reply in time; the write may or may not have committed
 ├── ``ReplicationTimeoutError`` the write committed, the local replica has not replayed it yet
 ├── ``WriteRejectedError``    the database refused the write (SQLSTATE); nothing was applied
 ├── ``CommitUnknownError``    a direct write lost its connection during COMMIT: outcome unknown
 ├── ``ProcedureError``        a procedure is unknown, or raised
 ├── ``ProtocolError``         a malformed or unsupported message
 └── ``TrackerError``          replay progress cannot be observed
"""

from __future__ import annotations

from typing import Any


class WriteBusError(Exception):
    """Base class of every writebus error."""

    #: Whether sending the same request again (same request id) may succeed.
    retryable: bool = False


class NoWorkerError(WriteBusError):
    """No bus worker is subscribed to serve the request (NATS reported no responders)."""

    retryable = True

    def __init__(self, subject: str, region: str) -> None:
        super().__init__(
            f"no writebus worker serves {subject!r}: is the bus running in region {region!r}?"
        )
        self.subject = subject
        self.region = region


class RpcTimeoutError(WriteBusError):
    """No reply within ``rpc_timeout``. The request may still have been applied."""

    retryable = True

    def __init__(self, subject: str, timeout: float, request_id: str) -> None:
        super().__init__(
            f"no reply on {subject!r} within {timeout:.3f}s (request {request_id}); "
            "the write may or may not have committed"
        )
        self.subject = subject
        self.timeout = timeout
        self.request_id = request_id


class ReplicationTimeoutError(WriteBusError):
    """The write **did commit** on the primary at ``lsn``, but the local replica had not
    replayed it within ``timeout``. Reading locally now may not show the write."""

    def __init__(self, lsn: int, timeout: float, replayed: int | None, region: str) -> None:
        from writebus.client.lsn import format_lsn

        seen = format_lsn(replayed) if replayed is not None else "unknown"
        super().__init__(
            f"write committed at LSN {format_lsn(lsn)}, but the replica in {region!r} "
            f"had replayed only {seen} after {timeout:.3f}s"
        )
        self.lsn = lsn
        self.timeout = timeout
        self.replayed = replayed
        self.region = region
        self.committed = True


#: Serialization failures and deadlocks: the whole transaction was rolled back and succeeds
#: when sent again (with the same request id).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


class WriteRejectedError(WriteBusError):
    """The primary refused the write; the whole transaction was rolled back.

    ``sqlstate`` is Postgres' error code; ``pg_error_class`` the matching psycopg error class
    (e.g. ``psycopg.errors.UniqueViolation``) so callers can ``except`` on it via
    :attr:`pg_error_class` or ``isinstance(err.__cause__, ...)``.
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        statement_index: int | None = None,
        detail: str | None = None,
    ) -> None:
        where = f" (statement {statement_index})" if statement_index is not None else ""
        code = f"[{sqlstate}] " if sqlstate else ""
        super().__init__(f"{code}{message}{where}")
        self.message = message
        self.sqlstate = sqlstate
        self.retryable = sqlstate in RETRYABLE_SQLSTATES
        self.statement_index = statement_index
        self.detail = detail

    @property
    def pg_error_class(self) -> type[Exception] | None:
        """psycopg's exception class for :attr:`sqlstate`, when it has one."""
        if not self.sqlstate:
            return None
        from psycopg import errors as pg_errors

        try:
            return pg_errors.lookup(self.sqlstate)
        except KeyError:
            return None


class ProcedureError(WriteBusError):
    """A procedure is not registered, or it raised an error that is not a database error."""

    def __init__(self, message: str, *, procedure: str, kind: str = "procedure") -> None:
        super().__init__(message)
        self.procedure = procedure
        self.kind = kind


class ProtocolError(WriteBusError):
    """A message could not be decoded, broke a limit, or used an unsupported version."""

    def __init__(self, message: str, *, kind: str = "protocol", data: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.data = data


class CommitUnknownError(WriteBusError):
    """A primary-region (direct) write lost its connection while COMMIT was in flight: it may or
    may not have committed. Not retried automatically, since running it again could apply it
    twice; check the database (or make the write idempotent) before trying again."""


class UnavailableError(WriteBusError):
    """The worker could not reach its database; the write was not applied. Retryable."""

    retryable = True


class TrackerError(WriteBusError):
    """Replay progress of the local replica cannot be observed (no broadcasts, no database)."""
