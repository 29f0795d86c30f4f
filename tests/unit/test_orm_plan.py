"""Planning ORM batches without servers: statements, order, guards, refusals, apply().

Sessions here have no engine: persistent objects are made with ``make_transient_to_detached``
(as if loaded), and apply() is fed a WriteResult built by hand, shaped as the wire returns it.
"""

from __future__ import annotations

import datetime
import decimal
import importlib
import sys
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    make_transient_to_detached,
    mapped_column,
    relationship,
)

from writebus.client.errors import WriteRejectedError
from writebus.client.orm import OrmRefusedError, Refusal, StaleObjectError, orm_batch
from writebus.client.orm_steps import GUARD_MARK
from writebus.client.orm_values import load, loadable, parse_duration
from writebus.client.results import StatementOutcome, Timings, WriteResult
from writebus.client.sqla import compile_construct


class Base(DeclarativeBase):
    pass


link = sa.Table(
    "link",
    Base.metadata,
    sa.Column("left_id", sa.ForeignKey("node.id"), primary_key=True),
    sa.Column("right_id", sa.ForeignKey("node.id"), primary_key=True),
)


sa.Table(
    "ticket_watcher",
    Base.metadata,
    sa.Column("ticket_id", sa.ForeignKey("ticket.id"), primary_key=True),
    sa.Column("node_id", sa.ForeignKey("node.id"), primary_key=True),
    sa.Column("since", sa.Text, default=lambda: "today"),
)


def stamp(context: Any) -> str:
    """A context-sensitive default: reads the row's other values."""
    return f"{context.get_current_parameters()['name']}!"


class Node(Base):
    """Client-assigned keys, a self-reference, a many-to-many to itself, a version counter."""

    __tablename__ = "node"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str]
    label: Mapped[str] = mapped_column(default=stamp)
    kind: Mapped[str] = mapped_column(default="leaf")
    note: Mapped[str | None]
    created: Mapped[datetime.datetime] = mapped_column(server_default=sa.func.now())
    changed: Mapped[int] = mapped_column(default=0, onupdate=lambda: 7)
    version: Mapped[int] = mapped_column()
    parent_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("node.id"))
    parent: Mapped[Node | None] = relationship(
        "Node", remote_side=[id], back_populates="children"
    )
    children: Mapped[list[Node]] = relationship("Node", back_populates="parent")
    links: Mapped[list[Node]] = relationship(
        "Node", secondary=link, primaryjoin=id == link.c.left_id,
        secondaryjoin=id == link.c.right_id,
    )
    __mapper_args__ = {"version_id_col": version}


class Ticket(Base):
    """A server-generated key; its items are owned (delete-orphan)."""

    __tablename__ = "ticket"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    amount: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(8, 2), server_default="1.50")
    addr: Mapped[str | None] = mapped_column(INET, server_default="10.0.0.1")
    items: Mapped[list[Item]] = relationship(
        "Item", back_populates="ticket", cascade="all, delete-orphan"
    )
    lines: Mapped[list[Line]] = relationship("Line")
    memos: Mapped[list[Memo]] = relationship("Memo")
    watchers: Mapped[list[Node]] = relationship("Node", secondary="ticket_watcher")


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(sa.ForeignKey("ticket.id"))
    ticket: Mapped[Ticket] = relationship("Ticket", back_populates="items")


class Memo(Base):
    """Its table has a column the mapper leaves out, with Python-side default and onupdate."""

    __table__ = sa.Table(
        "memo",
        Base.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ticket_id", sa.ForeignKey("ticket.id")),
        sa.Column("stamp", sa.Text, default="new", onupdate="changed"),
    )
    __mapper_args__ = {"exclude_properties": ["stamp"]}
    id: Mapped[int]
    ticket_id: Mapped[int | None]


class Line(Base):
    """Its key includes the ticket's: it cannot be detached from it."""

    __tablename__ = "line"
    ticket_id: Mapped[int] = mapped_column(sa.ForeignKey("ticket.id"), primary_key=True)
    no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class Animal(Base):
    __tablename__ = "animal"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column()
    __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "animal"}


class Dog(Animal):
    """Joined inheritance: two tables."""

    __tablename__ = "dog"
    id: Mapped[int] = mapped_column(sa.ForeignKey("animal.id"), primary_key=True)
    __mapper_args__ = {"polymorphic_identity": "dog"}


class Cat(Animal):
    """Single-table inheritance: one table, written like any mapper."""

    lives: Mapped[int | None]
    __mapper_args__ = {"polymorphic_identity": "cat"}


class Stamped(Base):
    """A Python default that reads the execution context beyond the row."""

    __tablename__ = "stamped"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    conn: Mapped[str] = mapped_column(default=lambda ctx: str(ctx.connection))


class Host(Base):
    """A generated key of a type outside the wire's contract."""

    __tablename__ = "host"
    addr: Mapped[str] = mapped_column(INET, primary_key=True, server_default="10.0.0.1")


link_alias = link.alias("link_alias")


class Pin(Base):
    """A many-to-one that does not cascade the related object into the session, and one
    written by a second UPDATE (post_update)."""

    __tablename__ = "pin"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    node_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("node.id"))
    node: Mapped[Node | None] = relationship("Node", cascade="merge", foreign_keys=[node_id])
    other_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("node.id"))
    other: Mapped[Node | None] = relationship("Node", post_update=True, foreign_keys=[other_id])
    aliased: Mapped[list[Node]] = relationship(
        "Node", secondary=link_alias, primaryjoin=lambda: Pin.id == link_alias.c.left_id,
        secondaryjoin=lambda: Node.id == link_alias.c.right_id,
    )


def node(s: Session, **values: Any) -> Node:
    """A persistent Node with loaded (empty) collections."""
    values.setdefault("id", uuid.uuid4())
    values.setdefault("name", "n")
    values.setdefault("version", 1)
    return loaded(s, Node(children=[], links=[], **values))  # type: ignore[no-any-return]


def loaded(session: Session, obj: Any) -> Any:
    """``obj`` persistent in ``session`` as if loaded, without a database."""
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


def sql(plan: Any) -> list[str]:
    """The plan's statements as the SQL the bus receives."""
    return [compile_construct(s)[0] for s in plan.statements]


def result(*rows: list[Any] | None) -> WriteResult:
    """A WriteResult with one statement per argument: its RETURNING rows (None: no result)."""
    outcomes = [StatementOutcome(rowcount=1, columns=None, rows=r or []) for r in rows]
    return WriteResult(outcomes, 1, "syd", True, Timings(0, 0, None, 0))


def refused(session: Session) -> OrmRefusedError:
    with pytest.raises(OrmRefusedError) as info:
        orm_batch(session)
    return info.value


def test_insert_evaluates_python_defaults_and_returns_server_ones() -> None:
    """An INSERT carries set values, evaluated Python defaults (a key, a context-sensitive one,
    the first version) and explicit NULLs for plain columns; server defaults come back."""
    s = Session()
    node = Node(name="a")
    s.add(node)
    plan = orm_batch(s)
    (text,) = sql(plan)
    params = compile_construct(plan.statements[0])[1]
    assert text.startswith("INSERT INTO node") and text.endswith("RETURNING node.created")
    assert "created" not in params and params["note"] is None
    assert isinstance(params["id"], uuid.UUID) and params["label"] == "a!"
    assert (params["kind"], params["version"], params["changed"]) == ("leaf", 1, 0)
    assert node.id is None  # planning changes nothing


def test_apply_settles_objects_with_returned_values() -> None:
    """apply() sets evaluated defaults and returned values (wire forms turned into the ORM's
    types); the objects become persistent and clean; unloadable server values stay expired."""
    s = Session()
    ticket = Ticket(title="t")
    s.add(ticket)
    plan = orm_batch(s)
    assert "RETURNING ticket.id, ticket.amount" in sql(plan)[0]
    plan.apply(s, result([[41, "1.50"]]))
    assert (ticket.id, ticket.amount) == (41, decimal.Decimal("1.50"))
    assert inspect(ticket).persistent and inspect(ticket).unloaded >= {"addr"}
    assert not (s.new or s.dirty) and inspect(ticket).key == (Ticket, (41,), None)


def test_apply_keeps_objects_only_the_session_held() -> None:
    """An object only the session referenced survives apply() (which takes it out of the
    session and back) and ends up persistent in the identity map."""
    s = Session()
    s.add(Ticket(title="held by the session alone"))
    plan = orm_batch(s)
    plan.apply(s, result([[7, "1.50"]]))
    assert [t.title for t in s.identity_map.values()] == ["held by the session alone"]


def test_update_sets_changes_only_and_guards_the_version() -> None:
    """An UPDATE sets the changed columns, the Python onupdate and the next version, matches
    the committed key and version, and fails unless exactly one row matched."""
    s = Session()
    node = loaded(s, Node(id=uuid.uuid4(), name="n", version=3, changed=0, note=None))
    node.note = "hello"
    plan = orm_batch(s)
    text, params = compile_construct(plan.statements[0])
    assert text.startswith("WITH writebus_write AS \n(UPDATE node SET note=")
    assert "node.version = %(version_1)s" in text and "CAST(" in text
    assert {params["version_1"], params["param_1"]} == {3, "hello"}
    assert 4 in params.values() and 7 in params.values()
    assert plan.steps[0].guard is not None and "UPDATE node" in plan.steps[0].guard
    plan.apply(s, result([[node.id]]))
    assert (node.version, node.changed, node.note) == (4, 7, "hello") and not s.dirty


def test_no_net_change_sends_nothing() -> None:
    """A dirty object whose values are back to the committed ones plans no statement."""
    s = Session()
    node = loaded(s, Node(id=uuid.uuid4(), name="n", version=1))
    node.name = "n"
    assert orm_batch(s).statements == []


def test_sql_expression_values_come_back() -> None:
    """An attribute set to a SQL expression is rendered in the UPDATE and read back."""
    s = Session()
    node = loaded(s, Node(id=uuid.uuid4(), name="n", version=1, changed=1))
    node.changed = Node.changed + 1
    plan = orm_batch(s)
    assert "SET changed=(node.changed + " in sql(plan)[0]
    assert "RETURNING node.changed" in sql(plan)[0]
    plan.apply(s, result([[2]]))
    assert node.changed == 2 and not s.dirty


def test_inserts_are_ordered_so_foreign_keys_hold() -> None:
    """Pending rows come after the pending rows they reference, whatever the add order: a
    grandchild added first still goes last."""
    s = Session()
    root = Node(name="root")
    mid = Node(name="mid", parent=root)
    leaf = Node(name="leaf", parent=mid)
    s.add(leaf)
    plan = orm_batch(s)
    order = [compile_construct(st)[1]["name"] for st in plan.statements]
    assert order == ["root", "mid", "leaf"]
    params = [compile_construct(st)[1] for st in plan.statements]
    assert params[1]["parent_id"] == params[0]["id"] and params[2]["parent_id"] == params[1]["id"]


def test_deletes_go_referencing_rows_first_after_detaching() -> None:
    """Deleting a parent and its child: the child's row goes first, each delete preceded by
    the removal of its association rows (not loaded: one DELETE for all of them)."""
    s = Session()
    parent = node(s, name="p")
    child = node(s, name="c", parent_id=parent.id)
    s.expire(parent, ["links"])
    s.delete(parent)
    s.delete(child)
    steps = orm_batch(s).steps
    texts = [compile_construct(step.statement)[0] for step in steps]
    assert [t.split()[0] for t in texts] == ["DELETE", "WITH", "DELETE", "WITH"]
    assert texts[0].startswith("DELETE FROM link WHERE link.left_id")
    assert [step.row.state.obj() for step in steps if step.row] == [child, parent]


def test_unloaded_unversioned_children_are_detached_by_one_update() -> None:
    """A deleted row's unloaded one-to-many rows (not versioned) get their key set to NULL by
    one UPDATE before the DELETE, as do its association rows by one DELETE; apply() expires
    that key on the session's objects."""
    s = Session()
    ticket = loaded(s, Ticket(id=1, title="t", items=[], lines=[]))
    memo = loaded(s, Memo(id=5, ticket_id=1))
    assert "memos" in inspect(ticket).unloaded
    s.delete(ticket)
    plan = orm_batch(s)
    assert sql(plan) == [
        "UPDATE memo SET ticket_id=%(ticket_id)s::INTEGER, stamp=%(stamp)s::VARCHAR "
        "WHERE memo.ticket_id = %(ticket_id_1)s::INTEGER",
        "DELETE FROM ticket_watcher WHERE ticket_watcher.ticket_id = %(ticket_id_1)s::INTEGER",
        "DELETE FROM ticket WHERE ticket.id = %(id_1)s::INTEGER",
    ]
    assert compile_construct(plan.statements[0])[1]["stamp"] == "changed"
    plan.apply(s, result(None, None, None))
    assert "ticket_id" in inspect(memo).unloaded and inspect(ticket).detached


def test_python_defaults_of_every_column_are_evaluated() -> None:
    """Python-side defaults are evaluated for columns the mapper leaves out and for
    association tables too: a compiled construct alone would send NULL for them."""
    s = Session()
    memo = Memo(id=1)
    ticket = loaded(s, Ticket(id=1, title="t", watchers=[]))
    ticket.watchers.append(node(s))
    s.add(memo)
    plan = orm_batch(s)
    insert_memo, link_row = (compile_construct(st)[1] for st in plan.statements)
    assert insert_memo["stamp"] == "new" and link_row["since"] == "today"
    plan.apply(s, result(None, None))
    assert inspect(memo).persistent and not s.new and not s.dirty


def test_many_to_many_rows_follow_the_collection() -> None:
    """Appending adds an association row; removing deletes it (guarded: it must exist)."""
    s = Session()
    a, b, c = node(s, name="a"), node(s, name="b"), node(s, name="c")
    a.links.append(b)
    plan = orm_batch(s)
    (text,) = sql(plan)
    assert text.startswith("INSERT INTO link") and plan.steps[0].guard is None
    assert compile_construct(plan.statements[0])[1] == {"left_id": a.id, "right_id": b.id}
    plan.apply(s, result(None))
    a.links.remove(b)
    a.links.append(c)
    texts = sql(orm_batch(s))
    assert texts[0].startswith("WITH writebus_write AS \n(DELETE FROM link")
    assert texts[1].startswith("INSERT INTO link")


def test_single_table_inheritance_is_written() -> None:
    """A single-table subclass writes its table with the discriminator set."""
    s = Session()
    s.add(Cat(lives=9))
    params = compile_construct(orm_batch(s).statements[0])[1]
    assert params == {"kind": "cat", "lives": 9}


@pytest.mark.parametrize("how", ["many_to_one", "one_to_many", "many_to_many"])
def test_refused_server_key(how: str) -> None:
    """A row needing a pending row's database-generated key is refused, naming the object."""
    s = Session()
    item = Item()
    if how == "many_to_one":
        item.ticket = Ticket(title="t")
        s.add(item)
        culprit: Any = item
    elif how == "one_to_many":
        s.add(Ticket(title="t", items=[item]))
        culprit = item
    else:
        culprit = Ticket(title="t", watchers=[node(s)])
        s.add(culprit)
    err = refused(s)
    assert err.obj is culprit and err.reason is Refusal.SERVER_KEY
    assert "ticket.id" in str(err) and "RETURNING" in str(err)


def _joined(s: Session) -> Any:
    dog = Dog()
    s.add(dog)
    return dog


def _key_change(s: Session) -> Any:
    n = node(s)
    n.id = uuid.uuid4()
    return n


def _row_switch(s: Session) -> Any:
    gone = node(s)
    s.delete(gone)
    again = Node(id=gone.id, name="again")
    s.add(again)
    return again


def _cycle(s: Session) -> Any:
    one, two = Node(id=uuid.uuid4(), name="1"), Node(id=uuid.uuid4(), name="2")
    one.parent_id, two.parent_id = two.id, one.id
    s.add_all([two, one])
    return two


def _post_update(s: Session) -> Any:
    pin = Pin(id=1, other=node(s))
    s.add(pin)
    return pin


def _orphan(s: Session) -> Any:
    item = loaded(s, Item(id=1, ticket_id=1))
    ticket = loaded(s, Ticket(id=1, title="t", items=[item], lines=[]))
    ticket.items.remove(item)
    return item


def _association(s: Session) -> Any:
    pin = loaded(s, Pin(id=1, aliased=[]))
    pin.aliased.append(node(s))
    return pin


def _not_loaded(s: Session) -> Any:
    n = node(s)
    s.expire(n)
    n.name = "m"  # the version the UPDATE must match is no longer known
    return n


def _unloaded_versioned_children(s: Session) -> Any:
    n = node(s)
    s.expire(n, ["children"])
    s.delete(n)
    return n


def _default(s: Session) -> Any:
    stamped = Stamped(id=1)
    s.add(stamped)
    return stamped


def _not_in_session(s: Session) -> Any:
    pin = Pin(id=1, node=Node(id=uuid.uuid4(), name="stray"))
    s.add(pin)
    return pin


def _key_type(s: Session) -> Any:
    host = Host()
    s.add(host)
    return host


def _blank_key(s: Session) -> Any:
    line = loaded(s, Line(ticket_id=1, no=1))
    ticket = loaded(s, Ticket(id=1, title="t", items=[], lines=[line]))
    ticket.lines.remove(line)
    return line


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (_joined, Refusal.MULTI_TABLE),
        (_key_change, Refusal.KEY_CHANGE),
        (_row_switch, Refusal.ROW_SWITCH),
        (_cycle, Refusal.CYCLE),
        (_post_update, Refusal.POST_UPDATE),
        (_orphan, Refusal.ORPHAN),
        (_association, Refusal.ASSOCIATION),
        (_not_loaded, Refusal.NOT_LOADED),
        (_unloaded_versioned_children, Refusal.NOT_LOADED),
        (_default, Refusal.DEFAULT),
        (_not_in_session, Refusal.NOT_IN_SESSION),
        (_key_type, Refusal.KEY_TYPE),
        (_blank_key, Refusal.BLANK_KEY),
    ],
)
def test_refusals_name_the_object_and_the_reason(setup: Any, reason: Refusal) -> None:
    """Each case one batch cannot write correctly raises OrmRefusedError with the object and
    the reason, while planning (nothing is sent: planning has no connection to send on)."""
    s = Session()
    culprit = setup(s)
    err = refused(s)
    assert (err.obj, err.reason) == (culprit, reason)
    assert f"[{reason}]" in str(err) and type(culprit).__name__ in str(err)


def test_stale_errors_are_recognised() -> None:
    """A guard's failure becomes StaleObjectError naming the object; other rejections stay."""
    s = Session()
    node = loaded(s, Node(id=uuid.uuid4(), name="n", version=1))
    node.name = "m"
    plan = orm_batch(s)
    failed = WriteRejectedError(
        f'invalid input syntax for type integer: "{GUARD_MARK} ...; rows matched: 0"',
        sqlstate="22P02", statement_index=0,
    )
    stale = plan.stale_error(failed)
    assert isinstance(stale, StaleObjectError) and stale.obj is node
    assert isinstance(stale, sa.orm.exc.StaleDataError) and "Node(id=" in str(stale)
    other = WriteRejectedError("duplicate key", sqlstate="23505", statement_index=0)
    assert plan.stale_error(other) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P0D", datetime.timedelta(0)),
        ("PT0.5S", datetime.timedelta(seconds=0.5)),
        ("P428DT14706.5S", datetime.timedelta(days=428, seconds=14706.5)),
        ("-PT79200S", -datetime.timedelta(hours=22)),
    ],
)
def test_wire_durations(text: str, expected: datetime.timedelta) -> None:
    """The wire's interval form reads back exactly."""
    assert parse_duration(text) == expected


def test_wire_values_load_as_the_orm_would() -> None:
    """Text forms become the column type's Python values, result processors included."""
    assert load(sa.Numeric(8, 2), "1.50") == decimal.Decimal("1.50")
    assert load(sa.Numeric(asdecimal=False), "1.5") == 1.5
    u = uuid.uuid4()
    assert load(sa.Uuid(), str(u)) == u and load(sa.Uuid(as_uuid=False), str(u)) == str(u)
    assert load(sa.Date(), "2026-01-02") == datetime.date(2026, 1, 2)
    assert load(sa.DateTime(), "2026-01-02T03:04:05.500000") == datetime.datetime(
        2026, 1, 2, 3, 4, 5, 500000
    )
    assert load(sa.Interval(), "PT60S") == datetime.timedelta(minutes=1)
    assert loadable(sa.Text()) and not loadable(INET()) and not loadable(sa.ARRAY(sa.Integer))


def test_without_sqlalchemy_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the helper without SQLAlchemy says which extra to install."""
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "writebus.client.orm")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'writebus\[sqlalchemy\]'"):
        importlib.import_module("writebus.client.orm")
