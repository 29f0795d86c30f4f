"""Wire protocol: encodings, validation, versioning."""

from __future__ import annotations

from pathlib import Path

import msgpack
import msgspec
import pytest

from writebus.client import schema
from writebus.client.errors import ProtocolError
from writebus.client.protocol import (
    JSON,
    MSGPACK,
    ErrorInfo,
    LsnUpdate,
    Reply,
    Request,
    Statement,
    decode,
    encode,
    encoding_of,
    lsn_update,
    update_fork,
    update_primary_fork,
)
from writebus.client.validation import validate_request


def test_msgpack_is_a_plain_map() -> None:
    """Requests are msgpack maps keyed by field name, readable by any msgpack library."""
    req = Request(id="r1", statements=[Statement(sql="SELECT %s", params=[1])])
    raw = msgpack.unpackb(encode(req))
    assert raw == {"id": "r1", "statements": [{"sql": "SELECT %s", "params": [1]}]}


def test_plain_msgpack_request_decodes() -> None:
    """A request packed by a plain msgpack library decodes into a Request."""
    data = msgpack.packb({"v": 1, "id": "x", "procedure": "p", "args": [1, "a"]})
    req = decode(data, Request, MSGPACK)
    assert req.procedure == "p" and req.args == [1, "a"]


def test_unknown_fields_are_ignored() -> None:
    """New fields added by a newer peer do not break an older reader."""
    data = msgpack.packb({"id": "x", "procedure": "p", "future_field": {"a": 1}})
    assert decode(data, Request, MSGPACK).id == "x"


def test_json_round_trip_and_sniffing() -> None:
    """JSON is chosen by header or by a body starting with '{'."""
    assert encoding_of({"Content-Type": "application/json"}, b"\x81") == JSON
    assert encoding_of(None, b'{"id":"a"}') == JSON
    assert encoding_of(None, b"\x81\xa2id") == MSGPACK
    reply = Reply(id="a", lsn="0/10", lsn_int=16)
    assert decode(encode(reply, JSON), Reply, JSON) == reply


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x92\x01\x02", msgpack.packb({"statements": []}), msgpack.packb([1, 2])],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    """Undecodable or wrongly shaped bytes raise ProtocolError."""
    with pytest.raises(ProtocolError):
        decode(data, Request, MSGPACK)


def test_wrong_types_are_protocol_errors() -> None:
    """A field of the wrong type is reported with its path."""
    with pytest.raises(ProtocolError, match="statements"):
        decode(msgpack.packb({"id": "x", "statements": "DROP TABLE"}), Request, MSGPACK)


@pytest.mark.parametrize(
    ("req", "kind", "match"),
    [
        (Request(id="a", v=2, procedure="p"), "protocol", "version 2"),
        (Request(id="", procedure="p"), "protocol", "request id"),
        (Request(id="a"), "protocol", "exactly one"),
        (Request(id="a", procedure="p", statements=[Statement(sql="x")]), "protocol", "exactly"),
        (Request(id="a", statements=[]), "protocol", "empty"),
        (Request(id="a", statements=[Statement(sql=" ")]), "protocol", "empty SQL"),
        (Request(id="a", statements=[Statement(sql="x")] * 1001), "limit", "limit"),
    ],
)
def test_validation(req: Request, kind: str, match: str) -> None:
    """Invalid requests are refused with a clear message and the right kind."""
    with pytest.raises(ProtocolError, match=match) as info:
        validate_request(req)
    assert info.value.kind == kind


def test_rpc_subjects_refuse_statements() -> None:
    """Statements are only accepted on the write subject."""
    with pytest.raises(ProtocolError, match="procedures only"):
        validate_request(Request(id="a", statements=[Statement(sql="x")]), allow_statements=False)


def test_lsn_update_fields() -> None:
    """Progress broadcasts carry region, replica id, LSN text and integer, time, recovery flag
    (version 1), then the fields added with defaults: primary position, lag, replay time,
    sender version."""
    upd = LsnUpdate(region="lax", replica_id="r", lsn="0/10", lsn_int=16, time=1.5,
                    in_recovery=True, role="replica")
    raw = msgpack.unpackb(encode(upd))
    assert raw == {"region": "lax", "replica_id": "r", "lsn": "0/10", "lsn_int": 16,
                   "time": 1.5, "in_recovery": True, "role": "replica", "v": 1,
                   "primary_lsn": None, "primary_lsn_int": None, "lag_bytes": None,
                   "lag_seconds": None, "replay_timestamp": None, "version": "",
                   "timeline": None, "fork_lsn": None, "fork_lsn_int": None,
                   "primary_timeline": None, "primary_fork_lsn": None,
                   "primary_fork_lsn_int": None}
    v1 = msgpack.packb({k: raw[k] for k in list(raw)[:8]})
    assert decode(v1, LsnUpdate) == upd  # a version-1 sender is still understood
    assert update_fork(upd) is None and update_primary_fork(upd) is None


def test_a_replica_relays_the_primarys_timeline_and_fork() -> None:
    """primary_timeline and primary_fork_lsn (text and integer; the text wins) carry what the
    replica's monitor heard the primary announce; malformed text is a protocol error."""
    upd = lsn_update(region="lax", replica_id="r", lsn=0x3000A38, role="replica",
                     in_recovery=True, primary_timeline=2, primary_fork_lsn=0x3000000)
    raw = msgpack.unpackb(encode(upd))
    assert (raw["primary_timeline"], raw["primary_fork_lsn"], raw["primary_fork_lsn_int"]) == (
        2, "0/3000000", 0x3000000)
    assert (raw["timeline"], raw["fork_lsn"]) == (None, None)  # the replica's own: not known
    assert update_primary_fork(decode(encode(upd), LsnUpdate)) == 0x3000000
    assert update_primary_fork(msgspec.structs.replace(upd, primary_fork_lsn_int=None)) == 0x3000000
    with pytest.raises(ProtocolError):
        update_primary_fork(msgspec.structs.replace(upd, primary_fork_lsn="0/zz"))


def test_a_promoted_primary_announces_where_its_history_forked() -> None:
    """fork_lsn carries the fork as text and as an integer; the text wins, as for lsn."""
    upd = lsn_update(region="lax", replica_id="r", lsn=0x3000A38, role="primary",
                     in_recovery=False, timeline=2, fork_lsn=0x3000000)
    raw = msgpack.unpackb(encode(upd))
    assert (raw["fork_lsn"], raw["fork_lsn_int"]) == ("0/3000000", 0x3000000)
    assert update_fork(decode(encode(upd), LsnUpdate)) == 0x3000000
    text_only = msgspec.structs.replace(upd, fork_lsn_int=None)
    assert update_fork(text_only) == 0x3000000
    with pytest.raises(ProtocolError):
        update_fork(msgspec.structs.replace(upd, fork_lsn="nonsense"))


def test_reply_values_of_postgres_types_encode() -> None:
    """Decimal, UUID, dates and other Postgres values encode (as text where msgpack lacks them)."""
    import datetime
    import decimal
    import ipaddress
    import uuid

    reply = Reply(id="a", value=[decimal.Decimal("1.5"), uuid.UUID(int=1),
                                 datetime.date(2026, 1, 2), ipaddress.ip_address("10.0.0.1")])
    out = msgpack.unpackb(encode(reply), timestamp=3)
    assert out["value"][0] == "1.5" and out["value"][3] == "10.0.0.1"


@pytest.mark.parametrize("sql", ["COMMIT", " rollback", "/* c */ BEGIN", "-- x\nEND",
                                 "SAVEPOINT a", "release a", "PREPARE TRANSACTION 'x'",
                                 "start transaction", ";COMMIT", " ;; ROLLBACK",
                                 "/* a /* nested */ comment */ COMMIT", "-- x\n;\n/**/end",
                                 "-- x\rCOMMIT"])
def test_transaction_control_is_refused(sql: str) -> None:
    """Statements that would end the request's own transaction (and its exactly-once record)
    are refused before anything runs -- also behind empty statements (Postgres drops them:
    ";COMMIT" is one command) and nested block comments."""
    with pytest.raises(ProtocolError, match="controls the transaction"):
        validate_request(Request(id="a", statements=[Statement(sql="SELECT 1"),
                                                     Statement(sql=sql)]))


@pytest.mark.parametrize("sql", ["COPY t FROM STDIN", "copy (SELECT 1) TO STDOUT",
                                 "/* x */ COPY t TO '/tmp/t.csv'"])
def test_copy_is_refused(sql: str) -> None:
    """COPY cannot run in the pipeline a batch is sent in (psycopg fails it with an error
    that has no SQLSTATE, as a lost connection's): refused before anything runs."""
    with pytest.raises(ProtocolError, match="statement 1 is a COPY"):
        validate_request(Request(id="a", statements=[Statement(sql="SELECT 1"),
                                                     Statement(sql=sql)]))


@pytest.mark.parametrize("sql", ["UPDATE t SET end_at = now()", "SELECT begin_x()",
                                 "INSERT INTO commits VALUES (1)", "SELECT 1 /* ; COMMIT */",
                                 "/* /* */ */ SELECT 'COMMIT'", "SELECT copy_rows()",
                                 "INSERT INTO copy VALUES (1)"])
def test_ordinary_statements_pass(sql: str) -> None:
    """Words like 'end' or 'commit' inside ordinary statements are fine."""
    validate_request(Request(id="a", statements=[Statement(sql=sql)]))


# --- every field always sent ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [MSGPACK, JSON])
def test_error_replies_carry_every_field(encoding: str) -> None:
    """A reply and its ErrorInfo carry every field even when it is nil or false, in both
    encodings: a strict decoder in another language sees one shape."""
    import json

    reply = Reply(id="a", ok=False, error=ErrorInfo(kind="protocol", message="m"))
    data = encode(reply, encoding)
    raw = json.loads(data) if encoding == JSON else msgpack.unpackb(data)
    assert set(raw) == set(Reply.__struct_fields__)
    assert raw["error"] == {"kind": "protocol", "message": "m", "sqlstate": None,
                            "retryable": False, "statement": None, "detail": None}


def test_timedelta_is_an_iso_8601_duration() -> None:
    """Intervals (Python timedelta) are ISO 8601 durations of days and seconds in both
    encodings, not float seconds (docs/protocol.md, "Values in results")."""
    import datetime

    reply = Reply(id="a", value=[datetime.timedelta(hours=1, minutes=30),
                                 datetime.timedelta(days=-1, hours=2)])
    assert msgpack.unpackb(encode(reply))["value"] == ["PT5400S", "-PT79200S"]
    assert decode(encode(reply, JSON), Reply, JSON).value == ["PT5400S", "-PT79200S"]


# --- the generated schemas and AsyncAPI document ------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_checked_in_schemas_are_up_to_date() -> None:
    """docs/schema/*.json and docs/asyncapi.yaml are exactly what the generator makes from the
    Structs today."""
    stale_files = schema.stale(DOCS)
    assert not stale_files, (
        f"out of date: {', '.join(stale_files)}; regenerate with `{schema.REGENERATE}` "
        "and commit the result"
    )


def test_check_command_reports_a_stale_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    """``--check`` exits 1 naming the regenerate command when a file is missing, changed or
    left over, and 0 after ``--write``."""
    assert schema.main(["--check", str(tmp_path)]) == 1
    assert schema.REGENERATE in capsys.readouterr().err
    assert schema.main(["--write", str(tmp_path)]) == 0
    assert schema.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "schema" / "Gone.json").write_text("{}")
    (tmp_path / "schema" / "Reply.json").write_text("{}")
    assert schema.stale(tmp_path) == ["schema/Reply.json", "schema/Gone.json"]
    schema.write(tmp_path)
    assert not (tmp_path / "schema" / "Gone.json").exists()
    assert schema.stale(tmp_path) == []


def test_every_protocol_struct_has_a_schema() -> None:
    """Every msgspec Struct defined in writebus.client.protocol gets a schema file: a new
    message cannot be left out of the machine-readable protocol."""
    import inspect

    import msgspec

    from writebus.client import protocol

    defined = {
        cls for _, cls in inspect.getmembers(protocol, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__module__ == protocol.__name__
    }
    assert defined <= set(schema.all_structs()), defined - set(schema.all_structs())
    assert {f"schema/{cls.__name__}.json" for cls in defined} <= set(schema.render())


def test_schemas_follow_the_structs() -> None:
    """Each schema is draft-07 and has exactly the Struct's fields; fields without a default
    are required; nested Structs are referenced by file name."""
    import msgspec

    for cls in schema.all_structs():
        doc = schema.json_schemas()[cls.__name__]
        assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
        fields = msgspec.structs.fields(cls)
        assert list(doc["properties"]) == [f.encode_name for f in fields]
        assert doc["required"] == [f.encode_name for f in fields if f.required]
    reply = schema.json_schemas()["Reply"]
    assert reply["properties"]["error"]["anyOf"][0] == {"$ref": "ErrorInfo.json"}
    assert "`Request`" in reply["description"] and "``" not in reply["description"]


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_document_reads_back_and_every_ref_resolves() -> None:
    """The checked-in AsyncAPI file is valid YAML equal to the generated document; every
    ``$ref`` points at something that exists (inside it, or a schema file); every subject of
    the subject table is there with its request/reply or publish operation."""
    import json

    import yaml

    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert doc == schema.asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    for ref in _refs(doc):
        if ref.startswith("#/"):
            node = doc
            for part in ref[2:].split("/"):
                node = node[part]
        else:
            assert (DOCS / ref).is_file(), ref
            for inner in _refs(json.loads((DOCS / ref).read_text())):
                assert (DOCS / "schema" / inner).is_file(), inner
    addresses = {ch["address"] for ch in doc["channels"].values()}
    assert {"{prefix}.write", "{prefix}.rpc.{region}", "{prefix}.lsn.{region}"} <= addresses
    ops = doc["operations"]
    assert ops["write"]["action"] == "receive" and "reply" in ops["write"]
    assert ops["rpc"]["action"] == "receive" and "reply" in ops["rpc"]
    assert ops["lsn"]["action"] == "send" and "reply" not in ops["lsn"]
    assert doc["components"]["messages"]["ReplyJson"]["contentType"] == JSON


@pytest.mark.parametrize(
    "value",
    [
        {"a": "yes", "b": "1.0", "c": "{x}.y", "d": "", "e": [], "f": {}, "g": "two\nlines",
         "h": None, "i": True, "j": 1.5, "k": -3, "Content-Type": "a: b # c", "$ref": "#/x/y"},
        [["a", ["b"]], [], [{"x": 1, "y": [2, {}]}], "- dash", "null", "~", "é ✓"],
        {"nested": {"deeper": [{"k": "v", "l": [1]}, "s"]}},
    ],
)
def test_yaml_writer_round_trips(value: object) -> None:
    """The generator's small YAML writer emits what a YAML parser reads back unchanged,
    including strings that look like other YAML values."""
    import yaml

    assert yaml.safe_load(schema.to_yaml(value)) == value


def test_an_integer_past_64_bits_is_a_protocol_error() -> None:
    """msgpack has no integer past 64 bits: encoding one, or measuring a request's
    parameters, raises ProtocolError (not applied), never a bare OverflowError."""
    req = Request(id="a", statements=[Statement(sql="SELECT %s", params=[2**64])])
    with pytest.raises(ProtocolError, match="64-bit"):
        encode(req)
    with pytest.raises(ProtocolError, match="64-bit"):
        validate_request(req)
    assert encode(Request(id="a", statements=[Statement(sql="SELECT %s", params=[2**63 - 1])]))


@pytest.mark.parametrize(
    "sql",
    ["SET search_path = x", "set session authorization bob", "SET ROLE r", "RESET ALL",
     "DISCARD ALL", "PREPARE p AS SELECT 1", "LISTEN c", "CREATE TEMP TABLE t (a int)",
     "create local temporary table t (a int) on commit preserve rows",
     "/* c */ ;SET TimeZone = 'UTC'", "SET/**/search_path=x", 'SET"search_path"=x',
     "SELECT 1 INTO TEMP t", "CREATE TABLE pg_temp.t (a int)",
     "SET LOCAL synchronous_commit = off", "SELECT set_config('synchronous_commit', 'off', true)",
     "SELECT set_config('app.user_id', '42', false)"],
)  # fmt: skip
def test_what_would_outlast_the_request_on_a_pooled_connection_is_refused(sql: str) -> None:
    """Session settings, prepared statements, LISTEN and temporary tables kept past COMMIT
    would reach later requests on the worker's connection, and synchronous_commit turned
    down would make the worker answer before its commit flushed: refused, nothing applied --
    behind comments and quotes too."""
    with pytest.raises(ProtocolError, match="outlast"):
        validate_request(Request(id="a", statements=[Statement(sql=sql)]))


def test_what_lasts_until_commit_is_allowed_and_kept_out_of_groups() -> None:
    """SET LOCAL, SET CONSTRAINTS, SET TRANSACTION, set_config(..., true) and a temporary
    table dropped at commit are allowed; their requests run in a transaction of their own. A
    plain write, an UPDATE ... SET, a table named temp, groups."""
    from writebus.client.validation import keeps_to_itself

    for sql in ("SET LOCAL TimeZone = 'UTC'", "SET CONSTRAINTS ALL DEFERRED",
                "set transaction isolation level serializable", "SET /* c */ LOCAL a.b = 1",
                "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
                "SELECT set_config('app.user_id', '42', true)"):  # fmt: skip
        req = Request(id="a", statements=[Statement(sql="SELECT 1"), Statement(sql=sql)])
        validate_request(req)
        assert keeps_to_itself(req)
    for sql in ("UPDATE t SET a = 1", "INSERT INTO temp VALUES (1)", "SELECT * FROM setof_x",
                "SELECT * FROM pg_temp.s", "SELECT add_note('moved into temp storage')"):
        plain = Request(id="a", statements=[Statement(sql=sql)])
        validate_request(plain)
        assert not keeps_to_itself(plain)


def test_parameters_nested_too_deep_are_refused_before_they_reach_a_group() -> None:
    """Arrays nested past MAX_PARAM_DEPTH (a hostile request: Postgres arrays have six
    dimensions) are a LimitError, not applied -- in a group they failed the worker's own
    recursion and made every member's outcome unknown. 32 levels still go, in a statement's
    parameters and a procedure's arguments."""
    from writebus.client.errors import LimitError
    from writebus.client.validation import MAX_PARAM_DEPTH

    def nested(depth: int) -> object:
        value: object = 1
        for _ in range(depth):
            value = [value]
        return value

    ok = Request(id="a", statements=[Statement(sql="SELECT %s", params=[nested(MAX_PARAM_DEPTH)])])
    validate_request(ok)
    validate_request(Request(id="a", procedure="p", args=[nested(MAX_PARAM_DEPTH)]))
    for bad in (Request(id="a", statements=[Statement(sql="SELECT %s", params=[nested(980)])]),
                Request(id="a", procedure="p", kwargs={"k": nested(980)})):  # fmt: skip
        with pytest.raises(LimitError, match="nest"):
            validate_request(bad)
    medium = Request(id="a", statements=[Statement(sql="SELECT %s", params=[nested(100)])])
    with pytest.raises(LimitError, match="nest deeper than 32"):
        validate_request(medium)
