"""docs/protocol.md, executed against the live bus: the document and the service cannot drift.

The document carries its own test data (see its last section, "How this document is tested"):
the value table marked ``<!-- wire-types -->``, the ``wire-example`` blocks, the ``wire-setup``
SQL, the ``wire-client`` program and the field tables. Every request goes over raw NATS and
every reply is decoded with plain ``msgpack``/``json``, as a peer in another language would --
in both encodings. Replies are also validated against the checked-in JSON Schemas.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import datetime
import io
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

import msgpack
import msgspec
import psycopg
import pytest

from tests.support.stack import REPO, primary_rows
from tests.support.wire import WirePeer
from writebus.bus.embedded.bus_process import BusProcess
from writebus.client import protocol
from writebus.client.errors import (
    ForbiddenError,
    IdempotencyKeyReusedError,
    LimitError,
    OutcomeUnknownError,
    ProcedureError,
    ProtocolError,
    TransactionEndedError,
    UnavailableError,
    WriteRejectedError,
)
from writebus.client.lsn import parse_lsn
from writebus.client.schema import CHANNELS, SCHEMA_DIR, all_structs
from writebus.client.wire_errors import TO_WIRE, error_info

DOCS = REPO / "docs"
TEXT = (DOCS / "protocol.md").read_text(encoding="utf-8")
MSGPACK = "msgpack"
JSON = "json"
ENCODINGS = (MSGPACK, JSON)
JSON_HEADERS = {"Content-Type": "application/json"}

# --- reading the document ----------------------------------------------------------------------

_FENCE = re.compile(r"^```(\w+) ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_ANY_FENCE = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`([^`]+)`")


def fenced(marker: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of every fenced block whose info string carries ``marker``; the
    heading is the nearest ``###``/``##`` heading above it."""
    out = []
    for match in _FENCE.finditer(TEXT):
        if match.group(2) == marker:
            headings = re.findall(r"^#{2,3} (.+)$", TEXT[: match.start()], re.MULTILINE)
            out.append((headings[-1] if headings else "", match.group(3)))
    return out


def table(marker: str) -> list[list[str]]:
    """The body rows (cells, stripped) of the first Markdown table after ``<!-- marker -->``."""
    start = TEXT.index(f"<!-- {marker} -->")
    lines = TEXT[start:].splitlines()[1:]
    while lines and not lines[0].startswith("|"):
        lines.pop(0)
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows[2:]  # header and separator


def code_spans(cell: str) -> list[str]:
    """The contents of the code spans in a table cell."""
    return _CODE.findall(cell)


# --- comparing values --------------------------------------------------------------------------


def same(expected: Any, actual: Any) -> bool:
    """Equal *and* of the same types all the way down (``1`` is not ``1.0`` or ``True``);
    NaN equals NaN."""
    if isinstance(expected, float) and isinstance(actual, float):
        return (math.isnan(expected) and math.isnan(actual)) or expected == actual
    if type(expected) is not type(actual):
        return False
    if isinstance(expected, dict):
        return expected.keys() == actual.keys() and all(
            same(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list):
        return len(expected) == len(actual) and all(map(same, expected, actual))
    return bool(expected == actual)


_LSN = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}\Z")
_KINDS = {
    "lsn": lambda v: isinstance(v, str) and bool(_LSN.match(v)),
    "lsn_int": lambda v: type(v) is int and 0 <= v < 2**64,
    "number": lambda v: type(v) in (int, float),
    "int": lambda v: type(v) is int,
    "string": lambda v: isinstance(v, str),
    "map": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and type(n) is int for k, n in v.items()
    ),
}


def _or_null(test: Any) -> Any:
    return lambda v: v is None or test(v)


#: ``"<kind>"`` and ``"<kind or null>"`` stand for any value of that kind (the document's
#: "Examples" section).
PLACEHOLDERS = {f"<{kind}>": test for kind, test in _KINDS.items()} | {
    f"<{kind} or null>": _or_null(test) for kind, test in _KINDS.items()
}


def mismatches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Where ``actual`` differs from a documented reply; placeholders match by kind."""
    if isinstance(expected, str) and expected in PLACEHOLDERS:
        ok = PLACEHOLDERS[expected](actual)
        return [] if ok else [f"{path}: {actual!r} is not {expected}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        if expected.keys() != actual.keys():
            out.append(
                f"{path}: keys differ: missing {sorted(expected.keys() - actual.keys())}, "
                f"extra {sorted(actual.keys() - expected.keys())}"
            )
        for key in expected.keys() & actual.keys():
            out += mismatches(expected[key], actual[key], f"{path}.{key}")
        for key, value in expected.items():
            # An LSN and its integer (lsn/lsn_int, primary_lsn/primary_lsn_int) must agree.
            text = actual.get(key.removesuffix("_int"))
            if value == "<lsn_int>" and isinstance(text, str) and _LSN.match(text):
                if actual.get(key) != parse_lsn(text):
                    out.append(f"{path}: {key} {actual.get(key)} is not {text}")
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [m for i, (e, a) in enumerate(zip(expected, actual, strict=True))
                for m in mismatches(e, a, f"{path}[{i}]")]
    return [] if same(expected, actual) else [f"{path}: expected {expected!r}, got {actual!r}"]


def as_json_values(value: Any) -> Any:
    """A msgpack-decoded value in the form JSON gives it (docs/protocol.md, "Values"): binary
    as base64, timestamps in RFC 3339 (UTC, ``Z``)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: as_json_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json_values(v) for v in value]
    return value


# --- a minimal JSON Schema validator for what client/schema.py emits --------------------------

_SCHEMA_KEYWORDS = {
    "$schema", "$ref", "title", "description", "type", "properties", "required", "items",
    "anyOf", "default", "additionalProperties",
}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def load_schema(name: str) -> dict[str, Any]:
    """A checked-in schema file (``docs/schema/<name>``)."""
    schema: dict[str, Any] = json.loads((DOCS / SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return schema


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Why ``value`` does not validate against ``schema`` (draft-07, the keywords above)."""
    unknown = schema.keys() - _SCHEMA_KEYWORDS
    assert not unknown, f"the test's validator does not know {unknown}; extend it"
    if "$ref" in schema:
        return schema_errors(value, load_schema(schema["$ref"]), path)
    if "anyOf" in schema:
        options = [schema_errors(value, s, path) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else [e for o in options for e in o]
    if "type" in schema and not _TYPES[schema["type"]](value):
        return [f"{path}: {value!r} is not {schema['type']}"]
    out = []
    if isinstance(value, dict):
        out += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                out += schema_errors(value[key], sub, f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - schema.get("properties", {}).keys():
                out += schema_errors(value[key], extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += schema_errors(item, schema["items"], f"{path}[{i}]")
    return out


# --- the document's test data ------------------------------------------------------------------


@dataclass(frozen=True)
class TypeRow:
    """One row of the value table."""

    types: list[str]
    example: str
    msgpack: Any
    json: Any


def _msgpack_cell(cell: str) -> Any:
    (code,) = code_spans(cell)
    if cell.startswith("**bin**"):
        return bytes.fromhex(code)
    if cell.startswith("**timestamp**"):
        return datetime.datetime.fromisoformat(code.replace("Z", "+00:00"))
    return json.loads(code)


def type_rows() -> list[TypeRow]:
    """The value table."""
    rows = []
    for cells in table("wire-types"):
        (example,) = code_spans(cells[1])
        (json_text,) = code_spans(cells[3])
        rows.append(TypeRow(code_spans(cells[0]), example, _msgpack_cell(cells[2]),
                            json.loads(json_text)))
    return rows


TYPE_ROWS = type_rows()
EXAMPLES = [
    (heading, ex if isinstance(ex, list) else [ex])
    for heading, ex in ((h, json.loads(body)) for h, body in fenced("wire-example"))
]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- talking to the bus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer(stack: Any, buses: dict[str, BusProcess]) -> Iterator[WirePeer]:
    """A raw NATS peer in lax, once the bus nodes are up."""
    p = WirePeer(stack.nats_url("lax"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def doc_setup(stack: Any) -> None:
    """The document's ``wire-setup`` SQL, run once on the primary."""
    ((_, sql),) = fenced("wire-setup")
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            conn.execute(sql)
    stack.wait_replica_caught_up(10)


def exchange(
    peer: WirePeer, subject: str, request: Any, encoding: str, *, sniffed: bool = False
) -> dict[str, Any]:
    """Send ``request`` in ``encoding`` and return the reply decoded with plain msgpack/json
    (msgpack timestamps as ``datetime``). Checks the reply is in the request's encoding."""
    if encoding == JSON:
        body = json.dumps(request).encode()
        headers = None if sniffed else JSON_HEADERS
    else:
        body, headers = msgpack.packb(request, use_bin_type=True, datetime=True), None
    msg = peer.run(peer.nc.request(subject, body, headers=headers, timeout=10))
    content_type = (msg.headers or {}).get("Content-Type")
    if encoding == JSON:
        assert content_type == "application/json", msg.headers
        reply = json.loads(msg.data)
    else:
        assert content_type is None, msg.headers
        reply = msgpack.unpackb(msg.data, raw=False, timestamp=3)
    assert isinstance(reply, dict)
    return reply


def _fresh_ids(exchanges: list[dict[str, Any]]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for ex in exchanges:
        rid = ex.get("request", {}).get("id")
        if isinstance(rid, str) and rid not in ids:
            ids[rid] = f"{rid}-{uuid.uuid4().hex[:12]}"
    return ids


def _with_ids(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with the document's request ids replaced by this run's: an ``id`` field, and
    an id quoted in a message (``'7f1c0d2a'``)."""
    if isinstance(value, dict):
        out = {k: _with_ids(v, ids) for k, v in value.items()}
        if isinstance(value.get("id"), str) and value["id"] in ids:
            out["id"] = ids[value["id"]]
        return out
    if isinstance(value, list):
        return [_with_ids(v, ids) for v in value]
    if isinstance(value, str):
        for old, new in ids.items():
            value = value.replace(f"'{old}'", f"'{new}'")
    return value


# --- the value table ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "row", TYPE_ROWS, ids=[f"{i:02d}-{_slug(r.example)[:30]}" for i, r in enumerate(TYPE_ROWS)]
)
def test_value_table_row(peer: WirePeer, doc_setup: None, row: TypeRow, encoding: str) -> None:
    """``SELECT <example>`` comes back as the table says, type for type, in msgpack and in
    JSON; a repeat of the request (answered from the exactly-once record) carries the same
    value; the reply validates against the checked-in Reply schema."""
    request = {"id": uuid.uuid4().hex, "statements": [{"sql": f"SELECT {row.example} AS v"}]}
    reply = exchange(peer, "writebus.write", request, encoding)
    assert reply["ok"] is True, reply
    (result,) = reply["results"]
    assert result["columns"] == ["v"] and result["rowcount"] == 1, result
    value = result["rows"][0][0]
    expected = row.msgpack if encoding == MSGPACK else row.json
    assert same(expected, value), f"{row.example}: documented {expected!r}, sent {value!r}"
    assert not schema_errors(as_json_values(reply), load_schema("Reply.json"))

    again = exchange(peer, "writebus.write", request, encoding)
    assert again["duplicate"] is True, again
    assert same(value, again["results"][0]["rows"][0][0]), again


def test_every_postgres_type_named_in_the_doc_has_a_row(stack: Any, doc_setup: None) -> None:
    """Every Postgres type named in backticks anywhere in the document has a row in the value
    table, and each row's example really is of one of the row's types."""
    prose = _ANY_FENCE.sub("", TEXT)
    tokens = {t for t in _CODE.findall(prose) if re.fullmatch(r"[A-Za-z][\w ]*(\[\])?", t)}
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:

        def canonical(name: str) -> str | None:
            # Pseudo-types (`unknown`, `internal`: error kinds) and table row types are not
            # value types.
            try:
                row = conn.execute(
                    "SELECT format_type(t.oid, NULL) FROM pg_type t "
                    "WHERE t.oid = to_regtype(%s) AND t.typtype NOT IN ('p', 'c')",
                    [name],
                ).fetchone()
            except psycopg.errors.SyntaxError:  # `SET LOCAL` and other words that are no type
                return None
            return row[0] if row else None

        covered: set[str] = set()
        for row in TYPE_ROWS:
            names = {c for c in map(canonical, row.types) if c is not None}
            assert len(names) == len(row.types), f"not a Postgres type in {row.types}"
            covered |= names
            if names:
                (actual,) = conn.execute(f"SELECT pg_typeof({row.example})::text").fetchone()
                assert actual in names, f"{row.example} is {actual}, its row says {row.types}"
        named = {c: t for t in tokens if (c := canonical(t)) is not None}
    missing = sorted(t for c, t in named.items() if c not in covered)
    assert not missing, f"types named in docs/protocol.md without a row in the value table: {missing}"
    assert len(covered) >= 20


# --- the examples ------------------------------------------------------------------------------


AS_PUBLISHED = "as-published"


def _example_params() -> list[Any]:
    params = []
    for heading, exchanges in EXAMPLES:
        published = [ex["subject"] for ex in exchanges if "published" in ex]
        if published:  # a broadcast comes in its subject's one encoding
            params.append(pytest.param(exchanges, AS_PUBLISHED, id=f"published-{published[0]}"))
            continue
        for encoding in ENCODINGS:
            params.append(pytest.param(exchanges, encoding, id=f"{encoding}-{_slug(heading)}"))
    return params


@pytest.mark.parametrize(("exchanges", "encoding"), _example_params())
def test_example(peer: WirePeer, exchanges: list[dict[str, Any]], encoding: str) -> None:
    """Each documented exchange, sent in msgpack and in JSON, gets exactly the documented
    reply: the same keys (so every Reply and ErrorInfo field is always sent), the same values,
    the request id echoed; a documented broadcast matches the next message on its subject.
    Every reply and broadcast validates against its checked-in schema."""
    ids = _fresh_ids(exchanges)
    for step, ex in enumerate(exchanges):
        if "published" in ex:
            actual = as_json_values(_next_broadcast(peer, ex["subject"]))
            expected, schema = ex["published"], _schema_of(ex["subject"])
        else:
            reply = exchange(peer, ex["subject"], _with_ids(ex["request"], ids), encoding)
            actual = as_json_values(reply)
            expected, schema = _with_ids(ex["reply"], ids), "Reply.json"
        problems = mismatches(expected, actual)
        assert not problems, f"step {step} ({encoding}):\n" + "\n".join(problems)
        assert not schema_errors(actual, load_schema(schema))


def _schema_of(subject: str) -> str:
    """The schema file of what is published on ``subject``, from the generator's subject table."""
    for ch in CHANNELS:
        pattern = re.escape(ch.address).replace(r"\{prefix\}", "[^.]+").replace(
            r"\{region\}", "[^.]+"
        )
        if re.fullmatch(pattern, subject):
            return f"{ch.message.__name__}.json"
    raise LookupError(subject)


def _next_broadcast(peer: WirePeer, subject: str) -> dict[str, Any]:
    async def first() -> Any:
        sub = await peer.nc.subscribe(subject)
        try:
            return await sub.next_msg(timeout=5)  # a heartbeat comes at least once a second
        finally:
            await sub.unsubscribe()

    msg = peer.run(first())
    if (msg.headers or {}).get("Content-Type") == "application/json":
        value = json.loads(msg.data)
    else:
        value = msgpack.unpackb(msg.data, raw=False, timestamp=3)
    assert isinstance(value, dict)
    return value


def test_json_without_header_is_sniffed_and_answered_in_json(peer: WirePeer) -> None:
    """The document's ``nats req`` command -- a JSON body, no header -- is read as JSON and
    answered in JSON with the ``Content-Type`` header."""
    command = re.search(r"`nats req (\S+) '([^']+)'`", TEXT)
    assert command is not None, "the nats req example is gone from docs/protocol.md"
    subject, body = command.groups()
    request = {**json.loads(body), "id": uuid.uuid4().hex}
    reply = exchange(peer, subject, request, JSON, sniffed=True)
    assert reply["ok"] is True, reply
    assert reply["results"][0]["rows"] == [[1]]


def test_msgpack_binary_and_timestamp_parameters(peer: WirePeer) -> None:
    """As documented for parameter values: msgpack binary is sent as ``bytea`` and a msgpack
    timestamp as ``timestamptz``; arrays become Postgres arrays."""
    when = datetime.datetime(2026, 7, 1, 2, 0, tzinfo=datetime.UTC)
    request = {
        "id": uuid.uuid4().hex,
        "statements": [
            {
                "sql": "SELECT pg_typeof(%s)::text, %s, pg_typeof(%s)::text, %s, 2 = ANY(%s)",
                "params": [b"\x00\xff", b"\x00\xff", when, when, [1, 2, 3]],
            }
        ],
    }
    reply = exchange(peer, "writebus.write", request, MSGPACK)
    assert reply["ok"] is True, reply
    assert reply["results"][0]["rows"] == [["bytea", b"\x00\xff", "timestamp with time zone",
                                            when, True]]


async def test_timestamptz_is_sent_in_utc_whatever_the_session_time_zone(stack: Any) -> None:
    """A database whose sessions run in another TimeZone still sends ``timestamptz`` in UTC
    (``Z`` in JSON), through the same write path the bus and the direct path use. (The
    document's SET LOCAL example cannot show this on its own: psycopg reads the zone when a
    connection's settings are reported, not per statement.)"""
    from writebus.bus.group import Executed, run_group

    url = stack.primary.url
    req = protocol.Request(
        id=f"tz-{time.time_ns()}",
        statements=[protocol.Statement(sql="SELECT timestamptz '2026-07-01 12:00+10', "
                                           "ARRAY[timestamptz '2026-01-01 00:00+11']")],
    )
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, options="-c TimeZone=Australia/Sydney"
    ) as conn:
        (out,) = await run_group(conn, [req], read_lsn=False, check=lambda r, res: None)
    assert isinstance(out, Executed)
    reply = protocol.Reply(id="tz", results=out.results)
    rows = json.loads(protocol.encode(reply, protocol.JSON))["results"][0]["rows"]
    assert rows == [["2026-07-01T02:00:00Z", ["2025-12-31T13:00:00Z"]]]


async def test_python_example_runs_as_written(stack: Any, buses: Any) -> None:
    """The document's Python program, which uses only nats-py and msgpack, runs as written
    (against this stack's NATS) and inserts its row."""
    ((_, source),) = fenced("wire-client")
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, body text)")
    source = source.replace("nats://127.0.0.1:4222", stack.nats_url("lax"))
    code = compile(source, "docs/protocol.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(code, {})  # a coroutine: the program has top-level awaits
        await result
    rows, lsn, lsn_int = out.getvalue().rsplit(" ", 2)
    assert parse_lsn(lsn) == int(lsn_int)
    assert primary_rows(stack, "SELECT count(*) FROM notes WHERE body = 'hi'")[0][0] >= 1


# --- tables that mirror the code ---------------------------------------------------------------


def _fields_tables() -> dict[str, list[str]]:
    names = re.findall(r"<!-- fields: (\w+) -->", TEXT)
    return {name: [field for cells in table(f"fields: {name}") for field in code_spans(cells[0])]
            for name in names}


def test_field_tables_list_exactly_the_struct_fields() -> None:
    """Each message's field table lists exactly the fields of its Struct, and every Struct of
    the protocol has one."""
    tables = _fields_tables()
    for cls in all_structs():
        assert cls.__name__ in tables, f"docs/protocol.md has no field table for {cls.__name__}"
        fields = [f.encode_name for f in msgspec.structs.fields(cls)]
        assert sorted(tables[cls.__name__]) == sorted(fields), cls.__name__


def test_ping_table_matches_the_ping_example() -> None:
    """The table of ``writebus.ping``'s value lists exactly the keys of the documented reply
    (which the live example checks against the service)."""
    (ping,) = [ex for heading, ex in EXAMPLES if heading == "Ping"]
    assert sorted(_fields_tables()["ping"]) == sorted(ping[0]["reply"]["value"])


def test_error_kinds_table_matches_the_code() -> None:
    """The error-kind table lists exactly ``ErrorKind``, and every error the worker can send
    maps to a documented kind."""
    documented = {code_spans(cells[0])[0] for cells in table("error-kinds")}
    assert documented == set(get_args(protocol.ErrorKind))
    samples: list[BaseException] = [
        WriteRejectedError("m", sqlstate="23505"),
        IdempotencyKeyReusedError("m"),
        LimitError("m"),
        ForbiddenError("m"),
        ProtocolError("m"),
        ProcedureError("m", procedure="p"),
        TransactionEndedError("id", "m"),
        OutcomeUnknownError("id", "m"),
        UnavailableError("m"),
        RuntimeError("a bug"),
    ]
    for cls, _ in TO_WIRE:
        assert any(isinstance(s, cls) for s in samples), f"add a {cls.__name__} sample here"
    sent = {error_info(s).kind for s in samples}
    assert sent == documented, sent ^ documented


def test_every_example_reply_shows_every_field() -> None:
    """The documented replies spell out every Reply and ErrorInfo field: the document shows
    the complete shape a strict decoder will see."""
    reply_fields = {f.encode_name for f in msgspec.structs.fields(protocol.Reply)}
    error_fields = {f.encode_name for f in msgspec.structs.fields(protocol.ErrorInfo)}
    replies = [ex["reply"] for _, exs in EXAMPLES for ex in exs if "reply" in ex]
    assert len(replies) >= 10
    for reply in replies:
        assert set(reply) == reply_fields, reply
        if reply["error"] is not None:
            assert set(reply["error"]) == error_fields, reply


def test_document_mentions_its_machine_readable_files() -> None:
    """The document points at the generated schemas and AsyncAPI file, which exist."""
    for path in ("schema/", "asyncapi.yaml"):
        assert f"]({path})" in TEXT
        assert (DOCS / path).exists()
    for cls in all_structs():
        assert f"`{cls.__name__}.json`" in TEXT, cls.__name__
        assert (DOCS / SCHEMA_DIR / f"{cls.__name__}.json").is_file()


def test_links_inside_the_document_resolve() -> None:
    """Every ``](#anchor)`` link names a heading of the document (GitHub's anchor rules)."""
    prose = _ANY_FENCE.sub("", TEXT)
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", prose, re.MULTILINE)
    }
    links = set(re.findall(r"\]\(#([\w-]+)\)", prose))
    assert links and links <= anchors, links - anchors
