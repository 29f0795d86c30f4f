"""Result values from the wire, typed as psycopg loads them.

The wire carries what msgpack and JSON have no type for as text (docs/protocol.md, "Values in
results"), and each result its columns' Postgres type OIDs (``types``). The Python client
turns those texts back into the objects psycopg gives for the same columns when it reads the
database itself -- ``numeric`` as ``Decimal``, ``uuid`` as ``UUID``, dates, times, intervals,
addresses, and arrays of them -- so a write's ``RETURNING`` rows have the same types in every
region, and as the app's own reads. A ``timestamptz`` is the same instant, in UTC. A column of
any other type keeps its wire value (psycopg gives those as text too, unless the app
registered a loader); so does a value that is not text (a ``timestamptz`` from msgpack is
already a ``datetime``).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from psycopg.postgres import types as pg_types

_DURATION = re.compile(r"(-)?P(?:(\d+)D)?(?:T(\d+(?:\.\d+)?)S)?")


def parse_duration(text: str) -> datetime.timedelta:
    """The wire's ISO 8601 duration of days and seconds (``P1DT30.5S``, ``-PT60S``)."""
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "-P"):
        raise ValueError(f"not a wire duration: {text!r}")
    sign, days, seconds = match.groups()
    micros = round(Decimal(seconds or 0) * 1_000_000)
    delta = datetime.timedelta(days=int(days or 0), microseconds=micros)
    return -delta if sign else delta


def _inet(text: str) -> Any:
    # As psycopg's InetLoader: an address with a prefix is an interface, else an address.
    return ipaddress.ip_interface(text) if "/" in text else ipaddress.ip_address(text)


def _timestamptz(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)  # JSON's "...Z"; msgpack's is a datetime


_BY_NAME: dict[str, Callable[[str], Any]] = {
    "numeric": Decimal,
    "uuid": uuid.UUID,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "timetz": datetime.time.fromisoformat,
    "timestamp": datetime.datetime.fromisoformat,
    "timestamptz": _timestamptz,
    "interval": parse_duration,
    "inet": _inet,
    "cidr": ipaddress.ip_network,
    "bytea": base64.b64decode,  # JSON's base64; msgpack's is bytes already
}
_SCALARS: dict[int, Callable[[str], Any]] = {
    pg_types[name].oid: load for name, load in _BY_NAME.items()
}
_ARRAYS: dict[int, Callable[[str], Any]] = {
    pg_types[name].array_oid: load for name, load in _BY_NAME.items()
}


def typed_rows(rows: list[list[Any]], types: Sequence[int] | None) -> list[list[Any]]:
    """``rows`` with each text value of a column in ``types`` loaded as psycopg would; the
    rows themselves when no column needs it."""
    if not types or not rows:
        return rows
    columns: list[tuple[int, Callable[[str], Any], bool]] = []
    for i, oid in enumerate(types):
        if oid in _SCALARS:
            columns.append((i, _SCALARS[oid], False))
        elif oid in _ARRAYS:
            columns.append((i, _ARRAYS[oid], True))
    if not columns:
        return rows
    out = []
    for row in rows:
        row = list(row)
        for i, load, is_array in columns:
            if i < len(row):
                row[i] = _load_array(load, row[i]) if is_array else _load(load, row[i])
        out.append(row)
    return out


def _load(load: Callable[[str], Any], value: Any) -> Any:
    return load(value) if isinstance(value, str) else value


def _load_array(load: Callable[[str], Any], value: Any) -> Any:
    if isinstance(value, list):
        return [_load_array(load, v) for v in value]
    return _load(load, value)
