"""Which statements may be written out whole (pure parts of :mod:`writebus.bus.literals`)."""

from __future__ import annotations

import pytest

from writebus.bus.literals import ProvenTexts, join, plain_text, renamed, shape, template
from writebus.client.protocol import Statement


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO notes (body, n) VALUES (%s, %s) RETURNING id",
        "UPDATE notes SET n = n + %(by)s WHERE id = %(id)s",
        'INSERT INTO "user" ("from", "we""ird") VALUES (%s, %s)',
        "SELECT count(*) FROM notes WHERE n %% 2 = %s",
        "DELETE FROM notes",
        "DELETE FROM t WHERE id IN (SELECT id FROM u WHERE k = %s)",
        "INSERT INTO t (a, b) VALUES ((SELECT id FROM u WHERE e = %s), %s)",
        "UPDATE t SET n = 1 WHERE EXISTS (SELECT 1 FROM u) AND k = %s",
        "INSERT INTO t (ts) VALUES (%s::timestamp with time zone)",
        'UPDATE t SET "using" = %s, "with" = %s',
        "INSERT INTO t SELECT %s FROM u WHERE a IN (SELECT b FROM v)",
        "UPDATE t SET j = to_jsonb(p) FROM (VALUES (%s)) p",
    ],
)
def test_plain_texts(sql: str) -> None:
    """Placeholders only where expressions stand, one command: may be written out."""
    assert plain_text(sql)


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("INSERT INTO notes (body) VALUES ('x')", "a string constant"),
        ("INSERT INTO notes (body) VALUES (%s) -- %s", "a line comment"),
        ("INSERT INTO notes (body) VALUES (%s) /* %s */", "a block comment"),
        ("INSERT INTO notes (body) VALUES ($1)", "a dollar sign"),
        ("SELECT $$%s$$", "a dollar quote"),
        ("INSERT INTO notes (body) VALUES (%s); DELETE FROM notes", "two commands"),
        ("INSERT INTO notes (body) VALUES (%s);", "a trailing semicolon"),
        ("SELECT E\\'x\\'", "a backslash"),
        ('INSERT INTO "no%ste" (body) VALUES (%s)', "a placeholder inside an identifier"),
        ('INSERT INTO "open (body) VALUES (%s)', "an unterminated identifier"),
        ("SELECT %(a)s, %(a)s::int", "a named placeholder used twice"),
        ('INSERT INTO t VALUES (%(v")s) ; DELETE FROM t --"', "a quote in a placeholder's name"),
        ("INSERT INTO audit (doc) SELECT to_jsonb(p) FROM (SELECT %s) p",
         "a derived table: a written value's column name would reach to_jsonb"),
        ("UPDATE t SET date = (SELECT date FROM (select %s) p)", "an unqualified name"),
        ("CREATE TABLE snap AS SELECT %s, now()", "a table made from a query"),
        ("SELECT %s INTO snap2", "a table made by SELECT INTO"),
        ("UPDATE t SET j = to_jsonb(p) FROM t2, (SELECT %s) p", "a derived table after a comma"),
        ("SELECT * FROM t NATURAL JOIN u WHERE a = %s", "a natural join"),
        ("DELETE FROM t USING u WHERE t.a = u.a AND u.b = %s", "using"),
        ("UPDATE t SET j = to_jsonb(p) FROM (SELECT %s) p WHERE t.id = %s", "one SELECT, derived"),
        ("WITH p AS (SELECT %s) UPDATE t SET j = to_jsonb(p) FROM p", "a CTE"),
    ],
)
def test_texts_that_are_not_plain(sql: str, why: str) -> None:
    """Anything where a written-in value could land inside a string, a comment or another
    command -- or take another type than bound -- is sent bound."""
    assert not plain_text(sql), why


def test_a_proof_covers_the_text_and_the_parameter_types() -> None:
    """The same text with a str where an int was proven is not covered: an unknown-typed
    value may be refused bound (no type deduced) where a literal would be accepted."""
    proven = ProvenTexts()
    ints = Statement(sql="SELECT pg_typeof(%s)", params=[1])
    proven.add([ints])
    assert Statement(sql="SELECT pg_typeof(%s)", params=[2**40]) in proven
    assert Statement(sql="SELECT pg_typeof(%s)", params=["1"]) not in proven
    assert Statement(sql="SELECT pg_typeof(%s)", params=[None]) not in proven
    named = Statement(sql="SELECT %(a)s, %(b)s", params={"a": 1, "b": "x"})
    proven.add([named])
    assert Statement(sql="SELECT %(a)s, %(b)s", params={"b": "y", "a": 2}) in proven
    assert shape(Statement(sql="DELETE FROM t")) == "DELETE FROM t"


def test_texts_that_are_not_plain_are_never_recorded() -> None:
    proven = ProvenTexts()
    stmt = Statement(sql="INSERT INTO notes (body) VALUES (%s) -- note", params=["x"])
    proven.add([stmt])
    assert stmt not in proven and len(proven) == 0


def test_the_least_recently_used_proof_goes_first() -> None:
    proven = ProvenTexts(capacity=2)
    a, b, c = (Statement(sql=f"DELETE FROM t{n}") for n in "abc")
    proven.add([a, b])
    proven.add([a])  # used again: b is now the oldest
    proven.add([c])
    assert a in proven and c in proven and b not in proven
    proven.clear()
    assert len(proven) == 0


def test_commands_are_joined_on_lines_of_their_own() -> None:
    assert join([b"BEGIN", b"SELECT 1"]) == b"BEGIN\n;\nSELECT 1"


def test_placeholders_are_cut_as_psycopg_reads_them() -> None:
    """``%s`` by position, ``%(name)s`` by name, ``%%`` a percent sign."""
    assert template("SELECT %s %% 2, %s", "utf-8") == ((b"SELECT ", b" % 2, ", b""), (0, 1))
    assert template("SELECT %(a)s, %(b)s", "utf-8") == ((b"SELECT ", b", ", b""), ("a", "b"))
    assert template("SELECT 1", "utf-8") == ((b"SELECT 1",), ())


@pytest.mark.parametrize("sql", ["SELECT %b", "SELECT %d", "SELECT %s, %(a)s", "SELECT %()s"])
def test_placeholders_psycopg_reads_another_way_are_not_cut(sql: str) -> None:
    """Binary placeholders, unknown ones, and positional mixed with named: sent bound, where
    psycopg decides (and refuses what it refuses)."""
    assert template(sql, "utf-8") is None


def test_columns_a_cast_may_have_named() -> None:
    """``SELECT %s`` names its column ``?column?`` bound and after the cast written."""
    assert renamed(["id", "int2"]) and renamed(["bytea"])
    assert not renamed(["id", "?column?"]) and not renamed(None) and not renamed([])


def test_a_proof_covers_the_parameters_types() -> None:
    """A typed '1.5' is no proof for an untyped one, whose type the server may not know:
    ``SELECT pg_typeof(%s)`` bound fails untyped, and was then written out as proven."""
    proven = ProvenTexts()
    proven.add([Statement(sql="SELECT pg_typeof(%s)", params=["1.5"], types=[1700])])
    assert Statement(sql="SELECT pg_typeof(%s)", params=["1.5"], types=[1700]) in proven
    assert Statement(sql="SELECT pg_typeof(%s)", params=["1.5"]) not in proven


def test_a_typed_values_cast_name_marks_its_column() -> None:
    """A bare typed value written in is named after its cast (``numeric``); with that name
    among the casts written, such a column is answered bound. Unwritten, ``numeric`` is not
    in the way, nor ``date`` as a table's column."""
    assert renamed(["date"], {"date"}) and not renamed(["date"])
    assert renamed(["n", "uuid"], {"uuid", "numeric"}) and not renamed(["n"], {"uuid"})


def test_a_refused_statement_is_not_proven_again() -> None:
    """A statement whose written result did not line up is never written out again: each
    group holding it ran twice, written and then the careful way."""
    proven = ProvenTexts()
    stmt = Statement(sql="INSERT INTO t (uuid) VALUES (%s) RETURNING uuid", params=["a"],
                     types=[2950])  # fmt: skip
    proven.add([stmt])
    assert stmt in proven
    proven.refuse(stmt)
    proven.add([stmt])
    assert stmt not in proven
