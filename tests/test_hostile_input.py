"""Hostile input against the real bus: fuzzed bytes and messages, limits, SQL errors.

Everything here speaks to the session's bus nodes over NATS with plain msgpack/JSON (see
``tests/wire.py``), as a peer in another language -- or an attacker -- would. The contract under
test: whatever arrives on ``writebus.write`` or ``writebus.rpc.<region>`` with a reply subject
gets a typed error reply (``ok: false``), the worker never crashes or stalls, and the next valid
request succeeds.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import nats
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.stack import primary_rows
from tests.support.wire import WirePeer, decode_reply
from writebus.bus.embedded.bus_process import BusProcess
from writebus.client import Database, ProtocolError, WriteRejectedError
from writebus.client.protocol import MAX_PARAM_BYTES, MAX_REQUEST_ID_LENGTH, MAX_STATEMENTS

WRITE = "writebus.write"
SUBJECTS = (WRITE, "writebus.rpc.syd", "writebus.rpc.lax")
JSON_HEADERS = {"Content-Type": "application/json"}
#: Error kinds a malformed message may get: it is the sender's fault, and says so.
SENDER_FAULT = {"protocol", "limit"}
#: Markers of the worker failing to answer properly, searched for in the bus logs.
WORKER_FAILURES = ("worker.serve_failed", "handler.internal_error")

FUZZ = settings(
    # WRITEBUS_FUZZ_EXAMPLES=2000 for a longer hunt; the default keeps the suite under ~30 s.
    max_examples=int(os.environ.get("WRITEBUS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    # bus_health is function-scoped on purpose: it checks the logs once per fuzzed test.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer(stack: Any, buses: dict[str, BusProcess]) -> Iterator[WirePeer]:
    """A raw NATS peer in lax (the bus nodes are up)."""
    p = WirePeer(stack.nats_url("lax"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def bus_health(buses: dict[str, BusProcess]) -> Iterator[None]:
    """Afterwards: both bus processes are alive and logged no failure to answer."""
    offsets = {r: _log_size(b) for r, b in buses.items()}
    yield
    for region, bus in buses.items():
        assert bus.is_running, f"bus {region} died:\n{bus.log_tail()}"
        new = _log_since(bus, offsets[region])
        for marker in WORKER_FAILURES:
            assert marker not in new, f"bus {region} logged {marker}:\n{new[-4000:]}"


def _log_size(bus: BusProcess) -> int:
    return bus.log_path.stat().st_size if bus.log_path.exists() else 0


def _log_since(bus: BusProcess, offset: int) -> str:
    with open(bus.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def _valid_write_succeeds(peer: WirePeer, table: str, body: str) -> None:
    req = {
        "id": uuid.uuid4().hex,
        "statements": [
            {"sql": f"INSERT INTO {table}(body) VALUES (%s) RETURNING body", "params": [body]}
        ],
    }
    reply = peer.request(WRITE, msgpack.packb(req))
    assert reply["ok"] is True, reply
    assert reply["results"][0]["rows"] == [[body]]


async def _ask(
    stack: Any, subject: str, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One raw request from a fresh connection in lax; the decoded reply."""
    nc = await nats.connect(stack.nats_url("lax"))
    try:
        msg = await nc.request(subject, body, headers=headers, timeout=5)
    finally:
        await nc.close()
    return decode_reply(msg.data, msg.headers)


def _request(**fields: Any) -> bytes:
    """A msgpack request with a fresh id and ``fields``."""
    return msgpack.packb({"id": uuid.uuid4().hex, **fields}, use_bin_type=True)


def _assert_sender_fault(reply: dict[str, Any]) -> None:
    assert reply["ok"] is False, reply
    assert reply["error"]["kind"] in SENDER_FAULT, reply
    assert reply["error"]["message"], reply


# --- strategies --------------------------------------------------------------------------------

_msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_msgpack_scalars = (
    st.none()
    | st.booleans()
    | _msgpack_ints
    | st.floats()
    | st.text(max_size=16)
    | st.binary(max_size=16)
)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
#: Anything msgpack can carry, including maps with non-string keys.
msgpack_values = st.recursive(
    _msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | _msgpack_ints | st.none(), inner, max_size=4)
    ),
    max_leaves=12,
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _is_valid_statements(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(s, dict) and isinstance(s.get("sql"), str) for s in value
    )


#: For each Request field: is a value of an acceptable *type* for it? (An independent oracle,
#: not the code under test.)
_ACCEPTS: dict[str, Any] = {
    "id": lambda x: isinstance(x, str),
    "v": lambda x: type(x) is int,
    "statements": lambda x: x is None or _is_valid_statements(x),
    "procedure": lambda x: x is None or isinstance(x, str),
    "args": lambda x: isinstance(x, list),
    "kwargs": lambda x: isinstance(x, dict) and all(isinstance(k, str) for k in x),
    "origin": lambda x: x is None or isinstance(x, str),
    "timeout_ms": lambda x: x is None or type(x) is int,
}


def _base(kind: str) -> dict[str, Any]:
    if kind == "sql":
        return {"v": 1, "id": uuid.uuid4().hex, "statements": [{"sql": "SELECT 1"}]}
    return {"v": 1, "id": uuid.uuid4().hex, "procedure": "whereami"}


@st.composite
def wrong_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request map that breaks the protocol in exactly one, randomly chosen, way."""
    req = _base(draw(st.sampled_from(["sql", "procedure"])))
    defect = draw(
        st.sampled_from(
            [
                "wrong_type",
                "no_id",
                "bad_id",
                "both",
                "neither",
                "version",
                "statement",
                "params",
                "too_many",
            ]
        )
    )
    if defect == "wrong_type":
        field = draw(st.sampled_from(sorted(_ACCEPTS)))
        value = draw(msgpack_values.filter(lambda x: not _ACCEPTS[field](x)))
        if field == "statements" and "procedure" in req:
            req.pop("procedure")  # else None would make a valid procedure call
        if field == "procedure" and "statements" in req:
            req.pop("statements")
        req[field] = value
    elif defect == "no_id":
        del req["id"]
    elif defect == "bad_id":
        req["id"] = draw(st.just("") | st.text(min_size=MAX_REQUEST_ID_LENGTH + 1, max_size=400))
    elif defect == "both":
        req["statements"] = [{"sql": "SELECT 1"}]
        req["procedure"] = draw(st.text(max_size=20))
    elif defect == "neither":
        req.pop("statements", None)
        req.pop("procedure", None)
    elif defect == "version":
        req["v"] = draw(
            st.integers(min_value=-(2**63), max_value=0)
            | st.integers(min_value=2, max_value=2**64 - 1)
        )
    elif defect == "statement":
        req.pop("procedure", None)
        stmt = draw(
            st.dictionaries(
                st.sampled_from(["sql", "params", "x"]), msgpack_values, max_size=3
            ).filter(lambda s: not (isinstance(s.get("sql"), str) and s["sql"].strip()))
        )
        req["statements"] = [{"sql": "SELECT 1"}, stmt]
    elif defect == "params":
        req.pop("procedure", None)
        params = draw(
            msgpack_values.filter(
                lambda p: (
                    p is not None
                    and not isinstance(p, list)
                    and not (isinstance(p, dict) and all(isinstance(k, str) for k in p))
                )
            )
        )
        req["statements"] = [{"sql": "SELECT %s", "params": params}]
    else:  # too_many
        req.pop("procedure", None)
        req["statements"] = [{"sql": "SELECT 1"}] * (MAX_STATEMENTS + draw(st.integers(1, 50)))
    return req


def _looks_like_request(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and "id" in value
        and ("statements" in value or "procedure" in value)
    )


# --- fuzzing -----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2048), subject=st.sampled_from(SUBJECTS), header=st.booleans())
def test_fuzz_raw_bytes(
    peer: WirePeer, bus_health: None, data: bytes, subject: str, header: bool
) -> None:
    """Random bytes on any served subject, read as msgpack or (by header) as JSON, get a
    protocol error reply."""
    _assert_sender_fault(peer.request(subject, data, headers=JSON_HEADERS if header else None))


@FUZZ
@given(value=msgpack_values, subject=st.sampled_from(SUBJECTS))
def test_fuzz_msgpack_values(peer: WirePeer, bus_health: None, value: Any, subject: str) -> None:
    """Any msgpack value that is not a request map gets a protocol error reply."""
    assume(not _looks_like_request(value))
    _assert_sender_fault(peer.request(subject, msgpack.packb(value, use_bin_type=True)))


@FUZZ
@given(value=json_values, subject=st.sampled_from(SUBJECTS), header=st.booleans())
def test_fuzz_json_values(
    peer: WirePeer, bus_health: None, value: Any, subject: str, header: bool
) -> None:
    """Any JSON value that is not a request object gets an error reply, in JSON when the
    request was recognisably JSON."""
    assume(not _looks_like_request(value))
    body = json.dumps(value).encode()
    reply = peer.request(subject, body, headers=JSON_HEADERS if header else None)
    _assert_sender_fault(reply)


@FUZZ
@given(req=wrong_requests(), subject=st.sampled_from(SUBJECTS), as_json=st.booleans())
def test_fuzz_structurally_wrong_requests(
    peer: WirePeer, bus_health: None, req: dict[str, Any], subject: str, as_json: bool
) -> None:
    """Wrong field types, a missing or bad id, both or neither of statements/procedure, an
    unsupported version, bad statements or params, too many statements: each gets a
    protocol or limit error, in msgpack or JSON."""
    if as_json:
        try:
            body = json.dumps(req).encode()
        except (TypeError, ValueError):
            body = b""
        # Only what JSON carries unchanged: no binary, no non-string keys (json.dumps would
        # quietly turn {0: x} into {"0": x}), no NaN.
        assume(body and json.loads(body) == req)
        reply = peer.request(subject, body, headers=JSON_HEADERS)
    else:
        reply = peer.request(subject, msgpack.packb(req, use_bin_type=True))
    _assert_sender_fault(reply)
    # The id is echoed once the request decoded; never a bad one.
    assert reply["id"] in ("", req.get("id")), reply
    assert len(reply["id"]) <= MAX_REQUEST_ID_LENGTH


@FUZZ
@given(
    params=st.lists(msgpack_values, max_size=3),
    rid=st.text(min_size=1, max_size=MAX_REQUEST_ID_LENGTH),
    origin=st.none() | st.text(max_size=30),
    use_sql=st.booleans(),
)
def test_fuzz_garbage_inside_valid_requests(
    peer: WirePeer,
    bus_health: None,
    params: list[Any],
    rid: str,
    origin: str | None,
    use_sql: bool,
) -> None:
    """Well-formed requests carrying arbitrary ids, origins and nested parameter values are
    answered with a result or a typed error -- never an internal error, never silence."""
    if use_sql:
        placeholders = ", ".join(["%s::text"] * len(params)) or "1"
        req: dict[str, Any] = {
            "id": rid,
            "statements": [{"sql": f"SELECT {placeholders}", "params": params}],
        }
        subject = WRITE
    else:
        req = {"id": rid, "procedure": "whereami", "args": params}
        subject = "writebus.rpc.lax"
    if origin is not None:
        req["origin"] = origin
    reply = peer.request(subject, msgpack.packb(req, use_bin_type=True))
    if not reply["ok"]:
        # 'unavailable': a pooled connection cut by an earlier test restarting a database.
        typed = {"protocol", "limit", "rejected", "procedure", "unavailable"}
        assert reply["error"]["kind"] in typed, reply


def test_worker_serves_after_fuzzing(
    peer: WirePeer, buses: dict[str, BusProcess], table: str
) -> None:
    """After all the fuzzing a valid write succeeds and both bus processes are alive."""
    _valid_write_succeeds(peer, table, "after-fuzz")
    assert buses["syd"].is_running and buses["lax"].is_running


# --- edge cases the fuzzer is unlikely to reach -----------------------------------------------

_DEEP = 100_000


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(
            b"\x83\xa2id\xa1x\xa9procedure\xa1p\xa4args" + b"\x91" * _DEEP + b"\xc0",
            None,
            id="msgpack-nested-100k-deep",
        ),
        pytest.param(
            b'{"id":"x","procedure":"p","args":' + b"[" * _DEEP + b"]" * _DEEP + b"}",
            JSON_HEADERS,
            id="json-nested-100k-deep",
        ),
        pytest.param(b"\x82\xa2id\xa1x\xa9procedure\xa2\xff\xfe", None, id="msgpack-bad-utf8"),
        pytest.param(b'{"id":"x","procedure":"\xff"}', JSON_HEADERS, id="json-bad-utf8"),
        pytest.param(b'{"id":"x","procedure":"\\ud800"}', JSON_HEADERS, id="json-lone-surrogate"),
        pytest.param(b"\xdd\xff\xff\xff\xff", None, id="msgpack-array-claims-4g-items"),
        pytest.param(
            msgpack.packb({"id": "a\x00b", "statements": [{"sql": "SELECT 1"}]}),
            None,
            id="nul-in-request-id",
        ),
    ],
)
async def test_pathological_messages_get_protocol_errors(
    stack: Any, buses: Any, bus_health: None, body: bytes, headers: dict[str, str] | None
) -> None:
    """Deep nesting, invalid UTF-8, lying length prefixes and a NUL in the request id are
    protocol errors (not internal errors), answered at once."""
    reply = await _ask(stack, WRITE, body, headers)
    _assert_sender_fault(reply)
    assert reply["error"]["kind"] == "protocol"


# --- limits ------------------------------------------------------------------------------------


async def test_client_refuses_payload_over_nats_max(lax_db: Database, table: str) -> None:
    """A write bigger than the server's max payload fails with a limit error before sending."""
    big = "x" * (lax_db.nats.max_payload + 1)
    with pytest.raises(ProtocolError) as info:
        await lax_db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [big])
    assert info.value.kind == "limit"
    assert "max payload" in str(info.value)


async def test_oversize_publish_is_refused_by_nats_and_worker_keeps_serving(
    stack: Any, buses: Any, bus_health: None, table: str
) -> None:
    """A peer that ignores the max payload is cut off by nats-server itself ('Maximum Payload
    Violation'); the worker never sees the message and keeps serving."""
    host, port = stack.nats_url("lax").removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        info = json.loads(sock.recv(65536).split(b" ", 1)[1])
        size = int(info["max_payload"]) + 1
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        sock.sendall(f"PUB {WRITE} _INBOX.oversize {size}\r\n".encode())
        answer = b""
        while b"-ERR" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert b"Maximum Payload Violation" in answer
    body = _request(statements=[{"sql": f"INSERT INTO {table}(body) VALUES ('after-oversize')"}])
    assert (await _ask(stack, WRITE, body))["ok"] is True


async def test_too_many_statements_is_a_limit_error(
    lax_db: Database, stack: Any, table: str
) -> None:
    """More than MAX_STATEMENTS statements in one batch: a limit error naming the limit, and
    nothing applied."""
    stmts = [
        (f"INSERT INTO {table}(body) VALUES (%s)", [f"s{i}"]) for i in range(MAX_STATEMENTS + 1)
    ]
    with pytest.raises(ProtocolError) as info:
        await lax_db.batch(stmts)
    assert info.value.kind == "limit"
    assert str(MAX_STATEMENTS) in str(info.value)
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]
    # The limit itself is allowed.
    res = await lax_db.batch(stmts[:MAX_STATEMENTS], await_replication=False)
    assert len(res.statements) == MAX_STATEMENTS


async def test_oversized_parameters_are_a_limit_error(
    lax_db: Database, stack: Any, table: str
) -> None:
    """Parameters over MAX_PARAM_BYTES (but under the NATS max) get a limit error naming the
    limit, for statements and for procedure arguments alike; nothing is applied."""
    big = "p" * (MAX_PARAM_BYTES + 1)
    assert len(big) < lax_db.nats.max_payload
    with pytest.raises(ProtocolError) as info:
        await lax_db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [big])
    assert info.value.kind == "limit" and str(MAX_PARAM_BYTES) in str(info.value)
    with pytest.raises(ProtocolError) as info:
        await lax_db.call("add_note", table, big)
    assert info.value.kind == "limit"
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


@pytest.mark.parametrize("params", [5, "abc", True, {"1": 2, 3: 4}], ids=repr)
async def test_params_of_the_wrong_shape_are_protocol_errors(
    stack: Any, buses: Any, params: Any
) -> None:
    """``params`` must be an array, a map with string keys, or nil."""
    reply = await _ask(stack, WRITE, _request(statements=[{"sql": "SELECT %s", "params": params}]))
    assert reply["ok"] is False and reply["error"]["kind"] == "protocol"
    assert "params" in reply["error"]["message"]


async def test_value_postgres_rejects_comes_back_with_sqlstate(
    lax_db: Database, table: str
) -> None:
    """A parameter of the wrong type for its column ('abc' into an int) is rejected by Postgres
    with SQLSTATE 22P02 (invalid_text_representation)."""
    with pytest.raises(WriteRejectedError) as info:
        await lax_db.execute(f"INSERT INTO {table}(body, n) VALUES (%s, %s)", ["x", "abc"])
    assert info.value.sqlstate == "22P02"
    assert "integer" in str(info.value)


async def test_unknown_procedure_on_every_subject(stack: Any, buses: Any) -> None:
    """An unregistered procedure gets a procedure error naming it and the registered ones, on
    the write subject and on each region's rpc subject."""
    for subject in SUBJECTS:
        reply = await _ask(stack, subject, _request(procedure="no_such_proc"))
        assert reply["ok"] is False and reply["error"]["kind"] == "procedure", subject
        assert "no_such_proc" in reply["error"]["message"]
        assert "whereami" in reply["error"]["message"]


@pytest.mark.parametrize("v", [0, 2, 99, -1, 2**64 - 1])
async def test_unknown_protocol_version(stack: Any, buses: Any, v: int) -> None:
    """A request with a version the worker does not speak gets a protocol error naming the
    version and the supported ones, in the request's encoding."""
    body = {"v": v, "id": "ver", "procedure": "whereami"}
    reply = await _ask(stack, WRITE, msgpack.packb(body))
    assert reply["ok"] is False and reply["error"]["kind"] == "protocol"
    assert f"version {v}" in reply["error"]["message"]
    assert "1..1" in reply["error"]["message"]
    assert reply["id"] == "ver"
    reply = await _ask(stack, WRITE, json.dumps(body).encode(), JSON_HEADERS)
    assert reply["error"]["kind"] == "protocol" and f"version {v}" in reply["error"]["message"]


# --- replies that would not fit ----------------------------------------------------------------


async def test_echo_of_a_huge_request_still_fits_in_a_reply(
    stack: Any, buses: Any, bus_health: None
) -> None:
    """A request just under the max payload whose error would echo its content (a long id, a
    long unknown procedure name, a long SQL token) still gets a short error reply."""
    max_payload = 1024 * 1024  # nats-server's default
    for make in (
        lambda f: {"id": f, "procedure": "whereami"},
        lambda f: {"id": "p", "procedure": f},
        lambda f: {"id": "s", "statements": [{"sql": f"SELECT {f}"}]},
        lambda f: {"id": "c", "statements": [{"sql": f"SELECT '{f}'::int"}]},
    ):
        overhead = len(msgpack.packb(make("")))
        body = msgpack.packb(make("z" * (max_payload - overhead - 8)))
        assert max_payload - 16 < len(body) <= max_payload
        reply = await _ask(stack, WRITE, body)
        assert reply["ok"] is False, reply.get("results")
        assert len(msgpack.packb(reply)) < 16 * 1024


async def test_result_over_the_max_payload_is_a_limit_error_and_rolled_back(
    lax_db: Database, stack: Any, table: str
) -> None:
    """A write whose result would not fit in one NATS message is refused with a limit error
    before it commits: 'ok: false' keeps meaning 'nothing was applied'."""
    with pytest.raises(ProtocolError) as info:
        await lax_db.execute(
            f"INSERT INTO {table}(body) SELECT 'row-' || g || repeat('r', 100) "
            "FROM generate_series(1, 20000) g RETURNING body"
        )
    assert info.value.kind == "limit" and "reply" in str(info.value)
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


# --- SQL errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELEC 1", "42601"),  # syntax_error
        ("INSERT INTO no_such_table_x VALUES (1)", "42P01"),  # undefined_table
        ("SELECT 1/0", "22012"),  # division_by_zero
        ("SELECT 'x'::int", "22P02"),  # invalid_text_representation
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'P0001'; END $$", "P0001"),
    ],
)
async def test_sql_errors_carry_sqlstate_and_worker_keeps_serving(
    stack: Any, buses: Any, bus_health: None, table: str, sql: str, sqlstate: str
) -> None:
    """A failing statement comes back as 'rejected' with Postgres' SQLSTATE and the index of
    the statement; the next write on the same worker succeeds."""
    body = _request(statements=[{"sql": "SELECT 1"}, {"sql": sql}])
    reply = await _ask(stack, WRITE, body)
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "rejected"
    assert reply["error"]["sqlstate"] == sqlstate
    assert reply["error"]["statement"] == 1
    ok = _request(statements=[{"sql": f"INSERT INTO {table}(body) VALUES ('next')"}])
    assert (await _ask(stack, WRITE, ok))["ok"] is True
