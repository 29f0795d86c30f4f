"""Unit tests for typed parameters: the types a client sends (``client/paramtypes.py``), how a
worker binds them (``bus/typedparams.py``), and the request check (``client/validation.py``).
The real-server tests are ``test_parity.py`` and the protocol document's examples."""

from __future__ import annotations

import datetime
import decimal
import enum
import ipaddress
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from writebus.bus.optimistic import plan_runs
from writebus.bus.typedparams import Typed, bound, text_of
from writebus.client.errors import ProtocolError
from writebus.client.paramtypes import as_a_worker_gets, param_type, param_types, with_types
from writebus.client.protocol import Request, Statement
from writebus.client.validation import validate_request


@pytest.mark.parametrize(
    ("value", "oid"),
    [
        (decimal.Decimal("1.5"), 1700),
        (uuid.UUID(int=1), 2950),
        (datetime.date(2026, 1, 2), 1082),
        (datetime.datetime(2026, 1, 2), 1114),
        (datetime.time(1, 2), 1083),
        (datetime.timedelta(seconds=3), 1186),
        (ipaddress.ip_address("10.0.0.1"), 869),
        (ipaddress.ip_network("10.0.0.0/8"), 650),
        (Jsonb({"a": 1}), 3802),
        ([decimal.Decimal("1"), None], 1231),
        ([[uuid.UUID(int=1)]], 2951),
    ],
)
def test_values_the_wire_carries_as_text_get_psycopgs_type(value: Any, oid: int) -> None:
    """A value msgpack carries as text gets the OID psycopg binds the value itself as."""
    assert param_type(value) == oid


@pytest.mark.parametrize(
    "value",
    ["x", 5, 2**40, 1.5, True, None, b"\x00", [1, 2], ["a", None], [], [[b"x"]],
     datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)],
)  # fmt: skip
def test_values_the_wire_carries_as_themselves_are_untyped(value: Any) -> None:
    """Strings, numbers, bytes, aware datetimes (a msgpack timestamp) and lists of them bind
    the same on a worker: no type is sent."""
    assert param_type(value) == 0


def test_types_follow_the_shape_of_the_parameters() -> None:
    """A list of parameters gets a list as long; a map gets the typed names only; nothing
    typed, no ``types`` at all (the wire stays as it was)."""
    assert param_types(["a", decimal.Decimal(1)]) == [0, 1700]
    assert param_types({"a": "x", "d": datetime.date(2026, 1, 1)}) == {"d": 1082}
    assert param_types(["a", 1]) is None and param_types({"a": 1}) is None
    assert param_types(None) is None


def test_a_statement_keeps_the_types_it_was_given() -> None:
    """``with_types`` fills ``types`` only where it is missing."""
    given = Statement(sql="SELECT %s", params=[decimal.Decimal(1)], types=[25])
    assert with_types(given) is given
    assert with_types(Statement(sql="SELECT %s", params=[decimal.Decimal(1)])).types == [1700]


def test_the_primary_region_binds_what_a_worker_decodes() -> None:
    """The direct path hands the worker's function the wire forms and their types."""
    stmt = as_a_worker_gets(Statement(sql="x", params=[decimal.Decimal("1.50"), [1, 2]]))
    assert stmt.params == ["1.50", [1, 2]] and stmt.types == [1700, 0]
    assert bound(stmt) == [Typed("1.50", 1700), [1, 2]]


class Mood(enum.Enum):
    SAD = 1


@pytest.mark.parametrize(
    ("value", "sent", "oid"),
    [
        (datetime.timedelta(seconds=-1), "-1 day +86399 second +0 microsecond", 1186),
        ([datetime.timedelta(days=-3)], ["-3 day +0 second +0 microsecond"], 1187),
        (decimal.Decimal("sNaN"), "NaN", 1700),
        (Mood.SAD, "SAD", 0),
        ((1, "a"), "(1,a)", 0),
        (datetime.timedelta(hours=1), "PT3600S", 1186),
    ],
)
def test_values_msgpack_would_misstate_travel_as_psycopgs_text(
    value: Any, sent: Any, oid: int
) -> None:
    """A negative timedelta (msgspec's ``-PT1S`` is no interval Postgres reads), a signalling
    NaN, an Enum (psycopg sends its name, msgpack its value) and a tuple (a composite, not an
    array) go as psycopg's text; a positive timedelta keeps msgspec's, which Postgres reads
    (and which resends recorded before keep)."""
    stmt = as_a_worker_gets(Statement(sql="x", params=[value]))
    assert stmt.params == [sent] and (stmt.types or [0]) == [oid]


def test_a_worker_wraps_typed_values_and_leaves_the_rest() -> None:
    """Typed values become :class:`Typed` text; untyped ones, nil and names the map leaves
    out are bound as they are."""
    listed = Statement(sql="x", params=["1.5", "a", None], types=[1700, 0, 1700])
    assert bound(listed) == [Typed("1.5", 1700), "a", None]
    named = Statement(sql="x", params={"a": "1", "b": "2"}, types={"b": 20})
    assert bound(named) == {"a": "1", "b": Typed("2", 20)}
    assert bound(Statement(sql="x", params=["1"])) == ["1"]


def test_arrays_are_written_as_postgres_array_text() -> None:
    """Elements are quoted, with backslashes and quotes escaped; nil is NULL; nested lists
    are nested braces."""
    assert text_of(["1.5", None, 'a "b" \\c']) == '{"1.5",NULL,"a \\"b\\" \\\\c"}'
    assert text_of([["1"], []]) == '{{"1"},{}}'
    assert text_of([True, 2, 2.5]) == '{"t","2","2.5"}'
    assert text_of(None) is None


def test_typed_text_is_dumped_with_its_own_oid() -> None:
    """psycopg sends a :class:`Typed` as its text, with its OID: one dumper per OID."""
    tx = psycopg.adapt.Transformer()
    a = tx.get_dumper(Typed("1", 1700), psycopg.adapt.PyFormat.AUTO)
    b = tx.get_dumper(Typed("1", 2950), psycopg.adapt.PyFormat.AUTO)
    assert (a.oid, b.oid) == (1700, 2950)
    assert bytes(a.dump(Typed("1.5", 1700))) == b"1.5"
    with pytest.raises(psycopg.DataError):
        a.dump(Typed("a\x00b", 1700))


def test_batched_runs_do_not_mix_types() -> None:
    """The same SQL with differently typed parameters is not one ``executemany`` run."""

    def req(n: int, types: list[int] | None) -> Request:
        return Request(id=f"r{n}", statements=[Statement(sql="x", params=["1"], types=types)])

    runs = plan_runs([req(0, [1700]), req(1, [1700]), req(2, [20]), req(3, None)])
    assert [(r.start, r.stop) for r in runs] == [(0, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize(
    ("stmt", "why"),
    [
        (Statement(sql="x", params=["1"], types=[1700, 0]), "as many parameters"),
        (Statement(sql="x", params={"a": "1"}, types=[1700]), "as many parameters"),
        (Statement(sql="x", params=["1"], types={"a": 1700}), "some of a map"),
        (Statement(sql="x", params={"a": "1"}, types={"b": 1700}), "some of a map"),
        (Statement(sql="x", params=["1"], types=[-1]), "-1 is not a type OID"),
        (Statement(sql="x", params=["1"], types=[2**32]), "is not a type OID"),
        (Statement(sql="x", params=[b"1"], types=[17]), "a typed bytes cannot"),
        (Statement(sql="x", params=[["1", b"2"]], types=[1231]), "a typed list cannot"),
        (Statement(sql="x", types=[1700]), "as many parameters"),
    ],
)
def test_types_that_do_not_fit_are_refused(stmt: Statement, why: str) -> None:
    """A ``types`` of another shape than ``params``, an OID out of range, or a typed value
    that cannot be sent as text is a protocol error naming the statement."""
    with pytest.raises(ProtocolError, match="statement 0's types do not fit") as info:
        validate_request(Request(id="r", statements=[stmt]))
    assert why in str(info.value)


def test_fitting_types_pass() -> None:
    """Untyped bytes and typed text, numbers and arrays pass the check."""
    stmt = Statement(sql="x", params=[b"1", "2", 3, ["4", None]], types=[0, 1700, 1700, 1231])
    validate_request(Request(id="r", statements=[stmt]))


class Ratio(float, enum.Enum):
    HALF = 0.5


class Perm(enum.Flag):
    R = 1


def test_enums_psycopg_sends_by_value_keep_their_value() -> None:
    """A float-valued Enum is a float to psycopg (its MRO finds float first): it goes as its
    value, typed as psycopg binds it; a Flag without a name does not raise."""
    stmt = as_a_worker_gets(Statement(sql="x", params=[Ratio.HALF, Perm(0)]))
    assert stmt.params == [0.5, 0]
