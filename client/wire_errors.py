"""Errors on the wire: one table from exceptions to :class:`ErrorInfo`, and back.

The worker answers every failure with an ``ErrorInfo`` (:func:`error_info`); the client turns it
back into the same exception class (:func:`error_from_info`). Both directions live here, side by
side, so a class added to one is added to the other, and a round-trip test covers every kind.
Like httpcore's ``map_exceptions``, the table is data: the first matching row wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from writebus.client.errors import (
    ForbiddenError,
    IdempotencyKeyReusedError,
    LimitError,
    OutcomeUnknownError,
    ProcedureError,
    ProtocolError,
    ResultNotSentError,
    TransactionEndedError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.protocol import ErrorInfo

#: Error messages and details are clipped to this many characters: Postgres and the validators
#: quote the offending input, which must not make the reply bigger than the request.
MAX_ERROR_TEXT: Final = 4096

#: The ``code`` of an :class:`IdempotencyKeyReusedError` (a ``protocol`` error): its ``detail``.
IDEMPOTENCY_KEY_REUSED: Final = "IdempotencyKeyReused"
#: ``detail`` of an ``unknown`` error whose transaction a statement ended: not retryable.
TRANSACTION_ENDED: Final = "TransactionEnded"
#: ``detail`` of an ``unknown`` error for a write that was applied but whose result could not
#: be sent (too large, or not encodable): not retryable -- a resend gets the same answer.
RESULT_NOT_SENT: Final = "ResultNotSent"


def clip(text: str) -> str:
    """``text`` cut to :data:`MAX_ERROR_TEXT` characters, saying how much was cut."""
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return f"{text[:MAX_ERROR_TEXT]}... ({len(text) - MAX_ERROR_TEXT} more characters)"


def _rejected(exc: BaseException) -> ErrorInfo:
    assert isinstance(exc, WriteRejectedError)
    return ErrorInfo(
        kind="rejected",
        message=exc.message,
        sqlstate=exc.sqlstate,
        retryable=exc.retryable,
        statement=exc.statement_index,
        detail=exc.detail,
    )


def _reused(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(kind="protocol", message=str(exc), detail=IDEMPOTENCY_KEY_REUSED)


def _unknown(exc: BaseException) -> ErrorInfo:
    reason = getattr(exc, "reason", "") or str(exc)  # the client words the rest again
    if isinstance(exc, TransactionEndedError):
        return ErrorInfo(kind="unknown", message=reason, detail=TRANSACTION_ENDED)
    return ErrorInfo(kind="unknown", message=reason, retryable=True)


def _kind(kind: str, retryable: bool = False) -> Callable[[BaseException], ErrorInfo]:
    def build(exc: BaseException) -> ErrorInfo:
        return ErrorInfo(kind=kind, message=str(exc), retryable=retryable)

    return build


#: Exception class -> its wire form. Order matters: subclasses before their bases.
TO_WIRE: Final[tuple[tuple[type[BaseException], Callable[[BaseException], ErrorInfo]], ...]] = (
    (WriteRejectedError, _rejected),
    (IdempotencyKeyReusedError, _reused),
    (LimitError, _kind("limit")),
    (ForbiddenError, _kind("forbidden")),
    (ProtocolError, _kind("protocol")),
    (ProcedureError, _kind("procedure")),
    (OutcomeUnknownError, _unknown),
    (UnavailableError, _kind("unavailable", retryable=True)),
)


def error_info(exc: BaseException) -> ErrorInfo:
    """The wire form of ``exc``; anything unexpected is an ``internal`` error (a bug)."""
    for cls, build in TO_WIRE:
        if isinstance(exc, cls):
            info = build(exc)
            break
    else:
        info = ErrorInfo(kind="internal", message=f"{type(exc).__name__}: {exc}")
    info.message = clip(info.message)
    if info.detail is not None:
        info.detail = clip(info.detail)
    return info


def error_from_info(
    info: ErrorInfo,
    *,
    request_id: str,
    subject: str = "",
    procedure: str | None = None,
    lsn: int | None = None,
) -> WriteBusError:
    """The exception a reply's ``error`` stands for (the inverse of :func:`error_info`);
    ``lsn``, the reply's position, when it carried one."""
    kind = info.kind
    if kind == "rejected":
        err: WriteBusError = WriteRejectedError(
            info.message, sqlstate=info.sqlstate, statement_index=info.statement, detail=info.detail
        )
        # The same psycopg class as __cause__ as on the direct path, so `except` and
        # isinstance(err.__cause__, UniqueViolation) behave alike in every region.
        cls = err.pg_error_class  # type: ignore[attr-defined]
        if cls is not None:
            err.__cause__ = cls(info.message)
        return err
    if kind == "protocol" and info.detail == IDEMPOTENCY_KEY_REUSED:
        return IdempotencyKeyReusedError(info.message)
    simple: dict[str, Callable[[str], WriteBusError]] = {
        "limit": LimitError,
        "forbidden": ForbiddenError,
        "protocol": ProtocolError,
        "unavailable": UnavailableError,
    }
    if kind in simple:
        return simple[kind](info.message)
    if kind == "procedure":
        return ProcedureError(info.message, procedure=procedure or "")
    if kind == "unknown" and info.detail == TRANSACTION_ENDED:
        return TransactionEndedError(request_id, info.message, subject=subject)
    if kind == "unknown" and info.detail == RESULT_NOT_SENT:
        return ResultNotSentError(request_id, info.message, lsn)
    if kind == "unknown":
        return OutcomeUnknownError(request_id, info.message, subject=subject)
    # "internal" (a bug on the worker, before or after COMMIT) or a kind newer than this
    # client: nothing says whether the write was applied.
    unknown = OutcomeUnknownError(request_id, f"{kind}: {info.message}", subject=subject)
    unknown.retryable = info.retryable
    return unknown
