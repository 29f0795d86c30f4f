"""SQLAlchemy Core constructs compiled for the wire (pure: no database)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
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


_T = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("name", sa.Text),
              sa.Column("my col", sa.Text, default="dflt"))  # fmt: skip


@pytest.mark.parametrize(
    ("construct", "params", "sent"),
    [
        (sa.select(_T.c.id).where(_T.c.name == sa.bindparam("my p")), {"my p": "x"},
         {"my_p": "x"}),
        (sa.select(_T.c.id).where(_T.c.name == sa.bindparam("my p", "d")), {"my p": "x"},
         {"my_p": "x"}),
        (sa.insert(_T).values({"id": 1, "my col": "a"}), {"my col": "b"},
         {"id": 1, "my_col": "b"}),
        (sa.insert(_T), {"id": 1, "my col": "z"}, {"id": 1, "my_col": "z"}),
        (sa.insert(_T), {"id": 1}, {"id": 1, "my_col": "dflt"}),
        (sa.update(_T).where(_T.c.id == 1), {"name": "n"}, {"name": "n", "id_1": 1}),
        (sa.insert(_T).values(id=1), {"name": "v"}, {"id": 1, "name": "v", "my_col": "dflt"}),
        (sa.update(_T).values(name="x").where(_T.c.id == 2), {"my col": "w"},
         {"name": "x", "my_col": "w", "id_1": 2}),
    ],
)  # fmt: skip
def test_params_fill_escaped_names_and_name_columns(
    construct: Any, params: dict[str, Any], sent: dict[str, Any]
) -> None:
    """``params`` reach a bindparam or column whose name needs escaping (``my p``), and set
    the columns they name in an insert or update, beside its ``values()``, as SQLAlchemy's
    ``connection.execute`` does (a column they named was dropped)."""
    assert compile_construct(construct, params)[1] == sent


def test_a_bindparam_named_like_a_set_column_is_refused_as_sqlalchemy_does() -> None:
    """As ``connection.execute``: the name is the SET clause's."""
    stmt = sa.update(_T).where(_T.c.id == sa.bindparam("id")).values(name="x")
    with pytest.raises(sa.exc.CompileError, match="reserved"):
        compile_construct(stmt, {"id": 5})
