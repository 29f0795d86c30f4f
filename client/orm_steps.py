"""The statements of an ORM batch: what each writes, how they are ordered, how they guard.

:mod:`writebus.client.orm_plan` decides which rows a session's changes write (:class:`RowWrite`);
this module turns them into Core statements (:class:`Step`), orders rows so foreign keys hold
(:func:`toposort`), and builds the guard that makes an UPDATE or DELETE fail -- rolling the
whole batch back -- unless it matched exactly one row (:func:`guard`). Also the errors of the
planning: :class:`Refusal` and :class:`OrmRefusedError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState, Mapper

from writebus.client import orm_values
from writebus.client.errors import Outcome, WriteBusError

#: Start of the error a guarded statement raises when it matched no row.
GUARD_MARK = "writebus: expected exactly one row:"

Column = sa.Column[Any]
Op = Literal["insert", "update", "delete"]


class Refusal(enum.StrEnum):
    """Why a session's changes cannot be written as one batch (docs/sqlalchemy.md)."""

    SERVER_KEY = "server_key"  # needs another pending object's database-generated key
    MULTI_TABLE = "multi_table"  # joined inheritance, or a mapper over a join or a query
    KEY_CHANGE = "key_change"  # the primary key of a persistent object was changed
    ROW_SWITCH = "row_switch"  # a pending object takes the identity of a deleted one
    POST_UPDATE = "post_update"  # relationship(post_update=True)
    ORPHAN = "orphan"  # removed from a delete-orphan collection but not deleted
    ASSOCIATION = "association"  # many-to-many rows through something other than a table
    CYCLE = "cycle"  # pending rows that reference each other
    NOT_LOADED = "not_loaded"  # a value the write needs (a key, the version) is not loaded
    DEFAULT = "default"  # a Python default that needs more of the execution context
    NOT_IN_SESSION = "not_in_session"  # a related object that is in no session
    KEY_TYPE = "key_type"  # a generated key of a type the wire cannot return faithfully
    BLANK_KEY = "blank_key"  # a dependency rule would set a primary key column to NULL


def describe(obj: object) -> str:
    """``Note(id=5)`` for a persistent object, ``Note(pending)`` for a pending one."""
    state: InstanceState[Any] = sa.inspect(obj)
    name = type(obj).__name__
    if state.key is None:
        return f"{name}(pending)" if state.pending else f"{name}(transient)"
    key = zip(state.mapper.primary_key, state.key[1], strict=True)
    return f"{name}(" + ", ".join(f"{c.key}={v!r}" for c, v in key) + ")"


class OrmRefusedError(WriteBusError):
    """The session's changes cannot be written correctly as one batch; nothing was sent.

    ``obj`` is the object in question, ``reason`` a :class:`Refusal`, ``detail`` the why."""

    outcome = Outcome.NOT_APPLIED

    def __init__(self, obj: object, reason: Refusal, detail: str) -> None:
        super().__init__(f"cannot write {describe(obj)} in one batch [{reason}]: {detail}")
        self.obj = obj
        self.reason = reason
        self.detail = detail


@dataclass(eq=False)
class RowWrite:
    """One object's row: what is written, how it is found, what comes back."""

    op: Op
    state: InstanceState[Any]
    table: sa.Table
    #: Written values: Python values, or SQL expressions (read back or expired).
    values: dict[Column, Any] = field(default_factory=dict)
    #: The committed primary key (and version) an UPDATE or DELETE matches.
    where: dict[Column, Any] = field(default_factory=dict)
    #: Server-side values read back with RETURNING, and those left to load from the replica.
    fetch: list[Column] = field(default_factory=list)
    expire: set[Column] = field(default_factory=set)
    #: Columns given by a relationship (``strong``) or nulled by a collection removal.
    strong: set[Column] = field(default_factory=set)
    synced: set[Column] = field(default_factory=set)

    def server(self, col: Column) -> None:
        """``col`` gets its value on the server: read it back, or leave it to load."""
        if orm_values.loadable(col.type):
            if col not in self.fetch:
                self.fetch.append(col)
        elif col.primary_key:
            raise OrmRefusedError(
                self.state.obj(), Refusal.KEY_TYPE,
                f"the database generates {col} of type {col.type}, which the wire cannot return "
                "faithfully; give it a client-side default",
            )
        else:
            self.expire.add(col)


@dataclass(frozen=True)
class Step:
    """One statement of the batch and what :meth:`OrmPlan.apply` needs to know about it."""

    statement: Any
    row: RowWrite | None = None
    returning: tuple[Column, ...] = ()
    #: Set on statements that fail unless exactly one row matched: what they match.
    guard: str | None = None
    #: Rows referencing a deleted row were detached: (their mapper, the key they had).
    detached: tuple[Mapper[Any], dict[Column, Any]] | None = None


def is_sql(value: Any) -> bool:
    """True for a SQL expression assigned to an attribute (``Note.n + 1``)."""
    return isinstance(value, sa.ClauseElement) or hasattr(value, "__clause_element__")


def mapped_columns(mapper: Mapper[Any]) -> list[tuple[Column, str]]:
    """The table columns a mapper writes, with their attribute keys."""
    out = []
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if isinstance(col, sa.Column) and col.table is mapper.local_table:
            out.append((col, prop.key))
    return out



class DefaultContext:
    """What a context-sensitive Python default may read: the row's other values."""

    def __init__(self, values: dict[Column, Any], column: Column) -> None:
        self.current_parameters = {c.key: v for c, v in values.items()}
        self.current_column = column

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        """The row's values by column key, as SQLAlchemy's execution context gives them."""
        return self.current_parameters


def objects(items: Iterable[Any]) -> list[InstanceState[Any]]:
    """The states of the objects in ``items`` (a history's lists; None left out)."""
    return [sa.inspect(o) for o in items if o is not None]


def identity_key(st: InstanceState[Any]) -> dict[Column, Any]:
    """The committed primary key of a persistent object, by column."""
    assert st.key is not None
    return dict(zip(columns(st.mapper.primary_key), st.key[1], strict=True))


def columns(cols: Iterable[Any]) -> list[Column]:
    """Mapper and relationship columns: typed as expressions, Columns of a Table here (only
    single-table mappers and table-backed associations are planned)."""
    return list(cols)


def pairs(items: Iterable[tuple[Any, Any]] | None) -> list[tuple[Column, Column]]:
    """A relationship's (referenced, referencing) column pairs."""
    return list(items or ())


def table_of(st: InstanceState[Any]) -> sa.Table:
    """The one table an object's row is in."""
    table = st.mapper.local_table
    assert isinstance(table, sa.Table)
    return table


def version_col(mapper: Mapper[Any]) -> Column | None:
    """The mapper's version counter column, if it has one."""
    col: Any = mapper.version_id_col
    return col  # type: ignore[no-any-return]


def match(key: dict[Column, Any]) -> list[Any]:
    return [col == value for col, value in key.items()]



def assemble(
    rows: list[RowWrite],
    *,
    committed: Callable[[RowWrite], dict[Column, Any]],
    links: list[tuple[sa.Table, dict[Column, Any]]],
    unlinks: list[tuple[sa.Table, dict[Column, Any]]],
    before_delete: dict[InstanceState[Any], list[Step]],
) -> list[Step]:
    """The batch, in order: inserts (a row after the rows it references), updates,
    association rows removed then added, deletes (a row before the rows it references, each
    after what detaches the rows still referencing it). ``committed`` gives a deleted row's
    committed values, to order the deletes by."""
    inserts = toposort([r for r in rows if r.op == "insert"], lambda r: r.values)
    deletes = toposort([r for r in rows if r.op == "delete"], committed)
    steps = [insert_step(r) for r in inserts]
    steps += [guarded_step(r, sa.update(r.table)) for r in rows if r.op == "update"]
    for table, key in unlinks:
        steps.append(guard(sa.delete(table), key, (), f"DELETE FROM {table.name} {key}"))
    steps += [Step(sa.insert(table).values(row)) for table, row in links]
    for row in reversed(deletes):
        steps += before_delete.get(row.state, [])
        if row.state.mapper.version_id_col is not None:
            steps.append(guarded_step(row, sa.delete(row.table)))
        else:
            steps.append(Step(sa.delete(row.table).where(*match(row.where)), row))
    return steps


def insert_step(row: RowWrite) -> Step:
    stmt = sa.insert(row.table).values(row.values)
    if row.fetch:
        stmt = stmt.returning(*row.fetch)
    return Step(stmt, row, tuple(row.fetch))


def guarded_step(row: RowWrite, dml: Any) -> Step:
    if row.op == "update":
        dml = dml.values(row.values)
    what = f"{row.op.upper()} {row.table.name} " + ", ".join(
        f"{c.name}={v!r}" for c, v in row.where.items())
    step = guard(dml, row.where, tuple(row.fetch), what)
    return Step(step.statement, row, tuple(row.fetch), guard=what)


def guard(dml: Any, where: dict[Column, Any], returning: tuple[Column, ...], what: str) -> Step:
    """``dml`` as one statement that fails -- rolling the whole batch back -- unless it matched
    exactly one row. A batch cannot look at a row count before COMMIT, so the statement checks
    itself: the write runs in a CTE, and a row count other than 1 casts the text
    ``"<GUARD_MARK> <what>; rows matched: <n>"`` to an integer, which raises (SQLSTATE 22P02)
    with that text in the message. The count is data, so Postgres cannot fold the cast away."""
    cols = returning or tuple(where)
    cte = dml.where(*match(where)).returning(*cols).cte("writebus_write")
    count = sa.select(sa.func.count().label("n")).select_from(cte).subquery("writebus_count")
    text = sa.literal(f"{GUARD_MARK} {what}; rows matched: ") + sa.cast(count.c.n, sa.Text)
    check = sa.case((count.c.n == 1, sa.literal(1)), else_=sa.cast(text, sa.Integer)) == 1
    stmt = sa.select(*(cte.c[c.name] for c in returning or cols[:1]))
    stmt = stmt.select_from(count.outerjoin(cte, sa.true())).where(check)
    return Step(stmt, guard=what)


def toposort(
    rows: list[RowWrite], values_of: Callable[[RowWrite], dict[Column, Any]]
) -> list[RowWrite]:
    """``rows`` with every row after the rows of the list it references (by foreign key
    values); stable otherwise. A cycle (without a deferred constraint) is refused."""
    values = {id(r): values_of(r) for r in rows}
    index: dict[tuple[sa.Table, tuple[Column, ...]], dict[Any, RowWrite]] = {}

    def lookup(table: sa.Table, cols: tuple[Column, ...], key: tuple[Any, ...]) -> Any:
        if (table, cols) not in index:
            index[(table, cols)] = {
                repr(tuple(values[id(r)].get(c) for c in cols)): r for r in rows if r.table is table
            }
        return index[(table, cols)].get(repr(key))

    deps: dict[int, set[int]] = {id(r): set() for r in rows}
    for row in rows:
        for fk in row.table.foreign_key_constraints:
            if (fk.initially or "").upper() == "DEFERRED":
                continue
            key = tuple(values[id(row)].get(c) for c in fk.columns)
            if any(v is None or is_sql(v) for v in key):
                continue
            target = tuple(e.column for e in fk.elements)
            parent = lookup(fk.referred_table, target, key)
            if parent is not None and parent is not row:
                deps[id(row)].add(id(parent))
    done: list[RowWrite] = []
    placed: set[int] = set()
    while len(done) < len(rows):
        ready = [r for r in rows if id(r) not in placed and deps[id(r)] <= placed]
        if not ready:
            stuck = next(r for r in rows if id(r) not in placed)
            raise OrmRefusedError(stuck.state.obj(), Refusal.CYCLE, (
                "it and other rows of the batch reference each other; a batch runs its "
                "statements in order: break the cycle (a nullable key set afterwards, or a "
                "DEFERRABLE INITIALLY DEFERRED constraint)"))
        done.extend(ready)
        placed.update(id(r) for r in ready)
    return done
