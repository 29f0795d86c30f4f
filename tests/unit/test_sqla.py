"""SQLAlchemy Core constructs compiled for the wire (pure: no database)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from writebus.client.sqla import compile_construct

T = sa.Table(
    "t",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("a", sa.Text, default="dflt"),
    sa.Column("u", sa.Uuid, default=uuid.uuid4),
    sa.Column("n", sa.Integer, onupdate=lambda: 7),
    sa.Column("j", sa.JSON),
)


def test_python_defaults_are_filled_in_before_sending() -> None:
    """Columns with a Python default the statement does not set get it (SQLAlchemy would at
    execution time); an explicit value wins."""
    _, params = compile_construct(sa.insert(T).values(id=1))
    assert params["a"] == "dflt" and isinstance(params["u"], uuid.UUID)
    _, params = compile_construct(sa.insert(T).values(id=1, a="mine"))
    assert params["a"] == "mine"
    _, params = compile_construct(sa.update(T).where(T.c.id == 1).values(a="x"))
    assert params["n"] == 7


def test_json_values_travel_as_json_text() -> None:
    """A JSON column's value becomes the text its SQL cast reads, not a psycopg adapter."""
    sql, params = compile_construct(sa.insert(T).values(id=1, j={"k": [1, 2]}))
    assert "::JSON" in sql and params["j"] == '{"k": [1, 2]}'


def test_ddl_compiles_without_parameters() -> None:
    """CREATE TABLE and friends compile to their text, with no parameters."""
    sql, params = compile_construct(sa.schema.CreateTable(T))
    assert sql.strip().startswith("CREATE TABLE t") and params == {}
