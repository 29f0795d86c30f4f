"""What a write returns to the caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from writebus.client.errors import RowFactoryError
from writebus.client.lsn import format_lsn
from writebus.client.protocol import StatementResult
from writebus.client.rows import RowFactory, make_rows
from writebus.client.wiretypes import typed_rows


@dataclass(frozen=True)
class StatementOutcome:
    """One statement's row count and rows (empty when it returned none)."""

    rowcount: int
    columns: tuple[str, ...] | None = None
    rows: list[Any] = field(default_factory=list)

    @classmethod
    def from_wire(
        cls, r: StatementResult, row_factory: RowFactory | None = None
    ) -> StatementOutcome:
        """Build from the protocol's :class:`StatementResult`: values typed as psycopg loads
        them (:mod:`writebus.client.wiretypes`), rows shaped by ``row_factory`` (tuples by
        default)."""
        rows = typed_rows(r.rows, r.types) if r.rows else []
        return cls(
            rowcount=r.rowcount,
            columns=tuple(r.columns) if r.columns is not None else None,
            rows=make_rows(r.columns, rows, row_factory) if rows else [],
        )


def shape_results(
    results: list[StatementResult],
    row_factory: RowFactory | None,
    *,
    request_id: str,
    lsn: int | None,
    timeline: int | None,
) -> list[StatementOutcome]:
    """The statements' outcomes of a write that committed, rows shaped by ``row_factory``; a
    factory that fails raises :class:`RowFactoryError` -- applied, at ``lsn`` -- never its own
    exception, which would say nothing of the commit."""
    try:
        return [StatementOutcome.from_wire(r, row_factory) for r in results]
    except Exception as exc:
        raise RowFactoryError(request_id, lsn, timeline, exc) from exc


@dataclass(frozen=True)
class Timings:
    """Where the time of one write went, in milliseconds.

    ``forward_ms``: request and reply in flight (round trip minus time on the worker);
    ``commit_ms``: time on the worker or local database, transaction through flush LSN;
    ``replication_ms``: waiting for the local replica to replay the LSN (None if not awaited).
    """

    forward_ms: float
    commit_ms: float
    replication_ms: float | None
    total_ms: float
    attempts: int = 1


@dataclass(frozen=True)
class WriteResult:
    """The outcome of ``execute``/``batch``/``call``.

    ``lsn`` is the primary's WAL flush position covering the commit, read after COMMIT returned,
    wherever the write ran (a primary-region write needs no wait, but other processes may). ``duplicate`` is true when a retried request had already been
    applied and its stored result was returned instead of applying it again.
    """

    statements: list[StatementOutcome]
    lsn: int | None
    region: str
    via_bus: bool
    timings: Timings
    value: Any = None
    duplicate: bool = False
    replicated: bool = False
    #: The WAL timeline of ``lsn`` when the worker reported it (pass it to
    #: :meth:`~writebus.client.db.Database.wait_for_lsn`, so a wait spanning a failover that
    #: lost the write says so instead of passing on the new primary's positions).
    timeline: int | None = None
    #: The request id the write was sent and recorded under (made by the client when the
    #: caller gave none): send the same write again under it to learn its outcome, after an
    #: error whose outcome is unknown.
    request_id: str | None = None

    @property
    def rows(self) -> list[Any]:
        """Rows of the last statement."""
        return self.statements[-1].rows if self.statements else []

    @property
    def rowcount(self) -> int:
        """Row count of the last statement."""
        return self.statements[-1].rowcount if self.statements else -1

    @property
    def token(self) -> str | None:
        """The session token of this commit: hand it to another request or process, which
        passes it as ``fetch(..., after=token)`` to read this write."""
        from writebus.client.tokens import make_token

        return make_token(self.lsn) if self.lsn is not None else None

    @property
    def lsn_text(self) -> str | None:
        """:attr:`lsn` as Postgres prints it."""
        return format_lsn(self.lsn) if self.lsn is not None else None
