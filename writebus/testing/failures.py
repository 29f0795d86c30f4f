"""Failures a :class:`~writebus.testing.FakeBus` can be told to produce, and the errors they make.

A failure is a value: :class:`FakeFailure` members, :class:`OutcomeUnknown` or
:class:`Rejected` (see :func:`rejected`). :func:`runs_first` says whether the write is applied
before the error is raised, and :func:`error_for` builds the error -- plain decisions with no
I/O, kept apart from the fake's database work.

The errors are the library's own classes with their real ``outcome``, built the way the client
builds them: a rejection goes through :func:`writebus.client.wire_errors.error_from_info`, as a
reply from a bus worker does, so ``err.__cause__`` is psycopg's class for the SQLSTATE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from writebus.client.errors import (
    RETRYABLE_SQLSTATES,
    DisconnectedError,
    NoWorkerError,
    OutcomeUnknownError,
    ReplicationTimeoutError,
    UnavailableError,
    WriteBusError,
    pg_error_class,
)
from writebus.client.protocol import ErrorInfo
from writebus.client.wire_errors import error_from_info

#: Said in the message of every injected error, so a failing test shows where it came from.
INJECTED = "injected by writebus.testing.FakeBus"


class FakeFailure(enum.Enum):
    """Failures with nothing to configure.

    * ``NO_WORKER`` -- :class:`~writebus.NoWorkerError`: no bus worker serves writes; not
      applied.
    * ``DISCONNECTED`` -- :class:`~writebus.DisconnectedError`: NATS was down, nothing was sent;
      not applied.
    * ``UNAVAILABLE`` -- :class:`~writebus.UnavailableError`: the worker could not reach the
      primary; not applied.
    * ``REPLICATION_TIMEOUT`` -- the write **is applied**, then
      :class:`~writebus.ReplicationTimeoutError` carrying its LSN is raised: the local replica
      had not replayed it in time. Only a write that waits for replication meets it; writes
      with ``await_replication=False`` before it pass.
    """

    NO_WORKER = "no_worker"
    DISCONNECTED = "disconnected"
    UNAVAILABLE = "unavailable"
    REPLICATION_TIMEOUT = "replication_timeout"


@dataclass(frozen=True, kw_only=True)
class OutcomeUnknown:
    """No answer came back: :class:`~writebus.OutcomeUnknownError` (outcome ``unknown``).

    ``applied=True`` runs the write first, as when its reply was lost: sending it again with
    ``request_id=err.request_id`` returns the stored result with ``duplicate=True`` (or, if the
    database refused the write, raises that refusal).
    ``applied=False`` applies nothing: sending it again applies it then.
    """

    applied: bool


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """The primary refused the write: :class:`~writebus.WriteRejectedError`, not applied."""

    sqlstate: str
    message: str
    statement_index: int | None = None


Failure = FakeFailure | OutcomeUnknown | Rejected


def rejected(
    sqlstate: str = "23505", message: str | None = None, *, statement_index: int | None = None
) -> Rejected:
    """A rejection with Postgres' ``sqlstate`` (default 23505, a unique violation).

    The error's ``pg_error_class`` and ``__cause__`` are psycopg's class for that code
    (``UniqueViolation``); ``message`` defaults to one naming that class.
    """
    if message is None:
        cls = pg_error_class(sqlstate)
        message = f"{cls.__name__ if cls is not None else 'rejected'} ({INJECTED})"
    return Rejected(sqlstate=sqlstate, message=message, statement_index=statement_index)


def runs_first(failure: Failure) -> bool:
    """Whether the write is applied before the error is raised."""
    if isinstance(failure, OutcomeUnknown):
        return failure.applied
    return failure is FakeFailure.REPLICATION_TIMEOUT


def error_for(
    failure: Failure,
    *,
    request_id: str,
    subject: str,
    primary_region: str,
    region: str,
    rpc_timeout: float,
    replication_timeout: float,
    lsn: int | None = None,
) -> WriteBusError:
    """The error a call sees for ``failure``.

    ``subject`` is where the request would have gone, ``region`` the caller's region, and
    ``lsn`` the commit of a write that :func:`runs_first` applied.
    """
    if isinstance(failure, Rejected):
        info = ErrorInfo(
            kind="rejected",
            message=failure.message,
            sqlstate=failure.sqlstate,
            retryable=failure.sqlstate in RETRYABLE_SQLSTATES,
            statement=failure.statement_index,
        )
        return error_from_info(info, request_id=request_id, subject=subject)
    if isinstance(failure, OutcomeUnknown):
        return OutcomeUnknownError(
            request_id,
            f"no reply within {rpc_timeout:.3f}s ({INJECTED})",
            subject=subject,
            timeout=rpc_timeout,
        )
    if failure is FakeFailure.NO_WORKER:
        return NoWorkerError(subject, primary_region)
    if failure is FakeFailure.DISCONNECTED:
        return DisconnectedError(
            f"not connected to NATS; request {request_id} was not sent ({INJECTED})"
        )
    if failure is FakeFailure.UNAVAILABLE:
        return UnavailableError(f"database unavailable ({INJECTED})")
    if failure is FakeFailure.REPLICATION_TIMEOUT:
        return ReplicationTimeoutError(lsn or 0, replication_timeout, None, region)
    raise TypeError(f"not a FakeBus failure: {failure!r}")
