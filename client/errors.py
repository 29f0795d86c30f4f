"""Typed errors. Each class says what the caller can do about it and carries the data to do it.

Every error a write can raise says what happened to the write, in :attr:`WriteBusError.outcome`:

* ``Outcome.NOT_APPLIED`` -- nothing this call sent was committed. Sending the write again
  (under any id) cannot apply it twice -- unless this call was itself a resend, under
  ``request_id=``, of a write whose outcome was unknown: an answer from before any database
  was reached (``NoWorkerError``, ``DisconnectedError``, ``UnavailableError``) says nothing
  of that earlier send, so keep resending under the same id until a worker answers.
* ``Outcome.APPLIED`` -- the write committed (``ReplicationTimeoutError``: the local replica has
  not shown it yet).
* ``Outcome.UNKNOWN`` -- it may or may not have committed. Send it again with the same
  ``request_id`` (within the idempotency window) to learn which: the bus applies each id once.

::

    WriteBusError
     ├── ConfigError               a setting is missing or malformed            (no write made)
     ├── ConnectError              NATS or the database cannot be reached at start-up
     ├── NoWorkerError             no bus worker serves the subject              NOT_APPLIED
     ├── DisconnectedError         NATS is down: the request was never sent      NOT_APPLIED
     ├── RpcTimeoutError           no reply in time                              UNKNOWN
     │    └── OutcomeUnknownError  ... or any attempt may have been applied      UNKNOWN
     │         ├── DatabaseTimeoutError   the primary did not finish in time  UNKNOWN
     │         └── TransactionEndedError  a statement ended the transaction   UNKNOWN
     ├── ReplicationTimeoutError   committed; the local replica is behind        APPLIED
     │                             (a read that must see a position: no write)   None
     ├── WriteRejectedError        the database refused the write (SQLSTATE)     NOT_APPLIED
     ├── ProcedureError            a procedure is unknown, or raised             NOT_APPLIED
     ├── ProtocolError             malformed or unsupported request              NOT_APPLIED
     │    ├── LimitError           a size or count limit was exceeded            NOT_APPLIED
     │    ├── ForbiddenError       refused by configuration (procedures only)    NOT_APPLIED
     │    └── IdempotencyKeyReusedError  the id was used for another request     NOT_APPLIED
     ├── UnavailableError          the worker could not reach its database       NOT_APPLIED
     ├── RowFactoryError           committed; the row factory failed on its rows APPLIED
     ├── StaleReadError            the replica lags more than a read allows      (a read)
     └── TrackerError              no replay progress (in a write's own wait: APPLIED)
          └── LostInFailoverError  promoted before replaying it: resend (same id) UNKNOWN
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from writebus.client.lsn import format_lsn

A = TypeVar("A")


class Outcome(enum.StrEnum):
    """What an error says about the write that raised it."""

    APPLIED = "applied"
    NOT_APPLIED = "not_applied"
    UNKNOWN = "unknown"


class WriteBusError(Exception):
    """Base class of every writebus error."""

    #: Whether sending the same request again (same request id) may succeed.
    retryable: bool = False
    #: What happened to the write; None for errors that are not about a write (a read, start-up).
    outcome: Outcome | None = None


class ConfigError(WriteBusError):
    """A setting is missing or malformed. ``variable`` names the environment variable."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class ConnectError(WriteBusError):
    """A server could not be reached at start-up.

    ``service`` is ``"nats"`` or ``"postgres"``, ``endpoint`` its ``host:port`` (never
    credentials) and ``reason`` the server's or the network's own words.
    """

    def __init__(self, service: str, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot connect to {service} at {endpoint}: {reason}")
        self.service = service
        self.endpoint = endpoint
        self.reason = reason


class NoWorkerError(WriteBusError):
    """No bus worker is subscribed to serve the request (NATS reported no responders), and no
    attempt of this call can have reached one: the write was not applied."""

    retryable = True
    outcome = Outcome.NOT_APPLIED

    def __init__(self, subject: str, region: str) -> None:
        super().__init__(
            f"no writebus worker serves {subject!r}: is the bus running in region {region!r}? "
            "The write was not applied."
        )
        self.subject = subject
        self.region = region


class DisconnectedError(WriteBusError):
    """The NATS connection is down, so the request could not be sent: it was not applied."""

    retryable = True
    outcome = Outcome.NOT_APPLIED


class RpcTimeoutError(WriteBusError):
    """No reply within the timeout. The request may still have been applied."""

    retryable = True
    outcome = Outcome.UNKNOWN

    def __init__(self, subject: str, timeout: float, request_id: str) -> None:
        super().__init__(
            f"no reply on {subject!r} within {timeout:.3f}s (request {request_id}); "
            "the write may or may not have committed"
        )
        self.subject = subject
        self.timeout = timeout
        self.request_id = request_id


class OutcomeUnknownError(RpcTimeoutError):
    """The write may or may not have been applied: an attempt reached (or may have reached) a
    worker, and no answer saying what happened came back in time.

    Send it again with ``request_id=err.request_id`` to learn the outcome: the bus applies each
    id once and answers a repeat with the stored result (``duplicate=True``). ``reason`` says
    what made the outcome unknown; ``last_error``, when set, is the last attempt's own error.
    """

    last_error: WriteBusError | None = None

    def __init__(
        self, request_id: str, reason: str = "", *, subject: str = "", timeout: float = 0.0
    ) -> None:
        super().__init__(subject, timeout, request_id)
        why = f" ({reason})" if reason else ""
        where = f" on {subject!r}" if subject else ""
        self.args = (
            f"outcome unknown for request {request_id}{where}{why}; send it again with "
            f"request_id={request_id!r} to learn whether it was applied",
        )
        self.reason = reason


class DatabaseTimeoutError(OutcomeUnknownError):
    """A primary-region write that its database did not finish within ``rpc_timeout`` (a
    statement waiting for a lock, a primary gone silent). Its run goes on there, as a bus
    worker's does after its caller gave up: it may still commit. Send it again with the same
    ``request_id`` to learn what it did -- the resend waits for it -- as for any
    :class:`OutcomeUnknownError`."""

    def __init__(self, request_id: str, timeout: float) -> None:
        super().__init__(
            request_id,
            f"the primary did not finish it within {timeout:.3f}s; it may still commit",
            timeout=timeout,
        )


class TransactionEndedError(OutcomeUnknownError):
    """A statement or procedure ended the request's own transaction (a ``COMMIT`` or
    ``ROLLBACK`` inside it). What ran before it may have committed, and without the
    exactly-once record: a resend under the same id would run it again. So it is not retried
    -- check the data before sending the write again."""

    retryable = False

    def __init__(
        self, request_id: str, reason: str = "", *, subject: str = "", timeout: float = 0.0
    ) -> None:
        super().__init__(request_id, reason, subject=subject, timeout=timeout)
        why = reason or "a statement ended the request's transaction"
        self.args = (
            f"outcome unknown for request {request_id}: {why}; it was not sent again -- check "
            "the data before sending the write again (a resend would run it again)",
        )


class UnrecordedOutcomeError(OutcomeUnknownError):
    """An ``rpc_region``/``rpc_primary`` call that may or may not have run. Those calls are
    not recorded: calling again runs it again -- check the data first. Not retryable."""

    retryable = False

    def __init__(self, unknown: OutcomeUnknownError) -> None:
        super().__init__(unknown.request_id, unknown.reason, subject=unknown.subject,
                         timeout=unknown.timeout)  # fmt: skip
        self.last_error = unknown.last_error
        said = str(self).split("; send it again")[0]
        self.args = (f"{said}; calls are not recorded, so calling again runs it again",)


class ReplicationTimeoutError(WriteBusError):
    """The write **did commit** on the primary at ``lsn``, but the local replica had not
    replayed it within ``timeout``. Reading locally now may not show the write.

    A read that must see a position first (its session's, an ``after=`` token's, or the
    primary's for ``consistency="strong"``) raises it too, when the replica does not reach it
    in time (``read=True``): ``lsn`` is that position, and ``outcome`` is None -- the read
    wrote nothing, and it did not run."""

    outcome: Outcome | None = Outcome.APPLIED

    def __init__(
        self,
        lsn: int,
        timeout: float,
        replayed: int | None,
        region: str,
        *,
        timeline: int | None = None,
        read: bool = False,
    ) -> None:
        seen = format_lsn(replayed) if replayed is not None else "unknown"
        super().__init__(
            (f"the read did not run: it must see LSN {format_lsn(lsn)}, and" if read else
             f"write committed at LSN {format_lsn(lsn)}, but")
            + f" the replica in {region!r} had replayed only {seen} after {timeout:.3f}s"
        )  # fmt: skip
        if read:
            self.outcome = None
        self.lsn = lsn
        self.timeout = timeout
        self.replayed = replayed
        self.region = region
        #: The timeline the write committed on, when the wait was told it.
        self.timeline = timeline
        self.committed = True


#: Serialization failures and deadlocks: the whole transaction was rolled back and succeeds
#: when sent again (with the same request id).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def pg_error_class(sqlstate: str | None) -> type[Exception] | None:
    """psycopg's exception class for ``sqlstate`` (e.g. ``UniqueViolation`` for 23505)."""
    if not sqlstate:
        return None
    from psycopg import errors as pg_errors

    try:
        return pg_errors.lookup(sqlstate)
    except KeyError:
        return None


class WriteRejectedError(WriteBusError):
    """The primary refused the write; the whole transaction was rolled back.

    ``sqlstate`` is Postgres' error code and :attr:`pg_error_class` the matching psycopg class
    (``psycopg.errors.UniqueViolation``...), the same in every region: ``__cause__`` is an
    instance of it whether the write ran in this process or on a bus worker.
    """

    outcome = Outcome.NOT_APPLIED

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
        return pg_error_class(self.sqlstate)


class ProcedureError(WriteBusError):
    """A procedure is not registered, or it raised an error that is not a database error."""

    outcome = Outcome.NOT_APPLIED

    def __init__(self, message: str, *, procedure: str) -> None:
        super().__init__(message)
        self.procedure = procedure


class ProtocolError(WriteBusError):
    """A message could not be decoded, broke a rule, or used an unsupported version."""

    outcome = Outcome.NOT_APPLIED
    #: The wire ``kind`` of this error.
    kind = "protocol"

    def __init__(self, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


class LimitError(ProtocolError):
    """A size or count limit was exceeded (statements, parameters, payload, reply)."""

    kind = "limit"


class ForbiddenError(ProtocolError):
    """Refused by configuration: raw SQL in procedures-only mode, or a NATS publish denied."""

    kind = "forbidden"


class IdempotencyKeyReusedError(ProtocolError):
    """The request id was already used for a different request. Nothing was applied: use a new
    id for a new request (a repeat must send the same body to learn its outcome)."""


class UnavailableError(WriteBusError):
    """The worker could not reach its database (or the caller's deadline had passed before it
    started); the write was not applied. Retryable."""

    retryable = True
    outcome = Outcome.NOT_APPLIED


class ResultNotSentError(WriteBusError):
    """The request **succeeded** (a write applied, or answered from its record), but its
    result could not be sent back (too large for NATS, or not encodable); a resend gets the
    same: read it from the database (``lsn``: where it committed). On the wire
    ``unknown``/``ResultNotSent``; not retryable."""

    outcome = Outcome.APPLIED

    def __init__(self, request_id: str, message: str, lsn: int | None = None) -> None:
        super().__init__(f"request {request_id}: {message}")
        self.request_id, self.lsn = request_id, lsn


class RowFactoryError(WriteBusError):
    """The write **committed** (at ``lsn``, on ``timeline``), and its replay was waited for as
    asked, but the row factory failed on its result rows (the exception is ``__cause__``). Do
    not send it again under a new id: fix the factory (or pass ``row_factory=`` for this call).
    A session counts the write, as for any write that committed."""

    outcome = Outcome.APPLIED

    def __init__(
        self, request_id: str, lsn: int | None, timeline: int | None, error: Exception
    ) -> None:
        at = f"at {format_lsn(lsn)}" if lsn is not None else "(no LSN)"
        super().__init__(
            f"request {request_id} committed {at}, but the row factory failed on its result "
            f"rows: {type(error).__name__}: {error}"
        )
        self.request_id = request_id
        self.lsn = lsn
        self.timeline = timeline


class StaleReadError(WriteBusError):
    """The local replica lags more than the read allows (``max_lag``), and did not catch up."""

    def __init__(self, message: str, *, lag: float | None, max_lag: float, region: str) -> None:
        super().__init__(message)
        self.lag = lag
        self.max_lag = max_lag
        self.region = region


class TrackerError(WriteBusError):
    """Replay progress of the local replica cannot be observed (no broadcasts, no database).

    Raised by a write that committed (``outcome`` applied) when only its wait failed; ``lsn``
    is then the commit's position, when the reply carried one, and ``timeline`` its
    timeline."""

    lsn: int | None = None
    timeline: int | None = None


class LostInFailoverError(TrackerError):
    """The local replica was promoted before it replayed ``lsn``: the old primary had
    committed the write, but it never reached this database, which is the primary now. With
    asynchronous replication that is the price of a failover. Send the write again with the
    same request id (:attr:`WriteResult.request_id`): the new primary has no record of it and
    applies it. A write's own wait raises it as :class:`OutcomeUnknownError`, with the id."""

    outcome = Outcome.UNKNOWN

    def __init__(self, lsn: int, switch_lsn: int, region: str) -> None:
        super().__init__(
            f"the replica in {region!r} was promoted at {format_lsn(switch_lsn)}, before it "
            f"replayed the write at {format_lsn(lsn)}: the write is not on the new primary; "
            "resend it with the same request id"
        )
        self.lsn = lsn
        self.switch_lsn = switch_lsn
        self.region = region


def after_an_uncertain_try(answer: A, request_id: str, uncertainty: str) -> A | OutcomeUnknownError:
    """A later try's ``answer`` (a result or an error) when an earlier try of the same id may
    have committed (``uncertainty`` says why). It stands unless it says "not applied" without
    settling the earlier try. Only a statement's rejection settles it: it came after the later
    try's claim waited for the id's lock and looked the id up. Anything else -- no worker, no
    connection, the claim or COMMIT refused -- may have come before that, so the outcome is
    unknown (``last_error``: the answer)."""
    if not isinstance(answer, WriteBusError) or answer.outcome is not Outcome.NOT_APPLIED:
        return answer
    if isinstance(answer, WriteRejectedError) and answer.statement_index is not None:
        return answer
    unknown = OutcomeUnknownError(request_id, f"{uncertainty}; the try after it said: {answer}")
    unknown.last_error = answer
    unknown.__cause__ = answer
    return unknown


def committed_at(error: BaseException) -> tuple[int | None, int | None]:
    """The position and timeline of a write that raised ``error`` although it committed --
    its replay wait timed out or failed -- else ``(None, None)``. A session must still count
    that write: the next read has to wait for it (the replica is known to be behind it),
    unless a failover lost it (the timeline says so)."""
    if not isinstance(error, WriteBusError) or error.outcome is not Outcome.APPLIED:
        return None, None
    lsn, timeline = getattr(error, "lsn", None), getattr(error, "timeline", None)
    return (
        lsn if isinstance(lsn, int) else None,
        timeline if isinstance(timeline, int) else None,
    )


def not_open(what: str, *, write: bool, reason: str = "") -> WriteBusError:
    """The error of a call on ``what`` ("the Database") before it was opened or after it was
    closed (``reason``: why it cannot be); a ``write`` says so: nothing was sent, it was not
    applied."""
    why = f" ({reason})" if reason else ""
    err = WriteBusError(f"{what} is not open{why}" + (": the write was not sent" if write else ""))
    if write:
        err.outcome = Outcome.NOT_APPLIED
    return err
