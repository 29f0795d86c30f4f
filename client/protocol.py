"""The wire protocol shared by the bus service, the client and other-language peers.

Messages are msgspec Structs encoded as **msgpack maps** by default (field names as keys, so a
peer needs only a plain msgpack library). A request whose ``Content-Type`` header is
``application/json`` -- or, without the header, whose body starts with ``{`` -- is read as JSON
and answered in JSON. See ``docs/protocol.md``.

Versioning: every message has ``v`` (currently 1). New fields are added with defaults and old
readers ignore unknown fields; fields are never renamed, removed, reordered or retyped. A request
with ``v`` greater than :data:`PROTOCOL_VERSION` gets a ``protocol`` error naming the version.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final, Literal, TypeVar

import msgspec
from psycopg.types.json import Json, Jsonb, JsonDumper

from writebus.client.errors import LimitError, ProtocolError
from writebus.client.lsn import format_lsn, parse_lsn

PROTOCOL_VERSION: Final = 1

T = TypeVar("T")

CONTENT_TYPE_HEADER: Final = "Content-Type"
JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"

Encoding = Literal["application/json", "application/msgpack"]

#: Default limits a worker enforces; a request over them gets a ``limit`` error.
MAX_STATEMENTS: Final = 1000
MAX_REQUEST_ID_LENGTH: Final = 128
MAX_PARAMS_PER_STATEMENT: Final = 65535
#: Encoded size (msgpack) of all of a request's parameters together: statement ``params``,
#: procedure ``args`` and ``kwargs``. Below NATS' default max payload (1 MiB) so an oversized
#: value gets this clear error rather than a refused publish.
MAX_PARAM_BYTES: Final = 512 * 1024

ErrorKind = Literal[
    "protocol",  # undecodable / invalid / unsupported version
    "limit",  # a size or count limit was exceeded
    "rejected",  # the database refused the write (has sqlstate)
    "procedure",  # unknown procedure, or it raised
    "forbidden",  # e.g. raw SQL while the bus runs in procedures-only mode
    "unavailable",  # the worker could not reach its database (retryable)
    "unknown",  # the connection was lost while COMMIT was in flight (retry with the same id)
    "internal",  # a bug; logged on the worker
]


class Statement(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One SQL statement with psycopg-style placeholders (``%s`` or ``%(name)s``).

    ``types``: the Postgres type OID of each parameter the wire carries as text (a decimal, a
    UUID, a date...), so a worker binds it as that type, as psycopg binds the value itself; 0
    (or left out of a map) leaves a parameter's type to its value. Shaped like ``params``: a
    list as long as it, or a map of some of its names (:mod:`writebus.client.paramtypes`).
    """

    sql: str
    params: list[Any] | dict[str, Any] | None = None
    types: list[int] | dict[str, int] | None = None


class RequestId(msgspec.Struct):
    """Just the ``id`` of a request: read from a request that is otherwise invalid, so the
    error reply can still echo it."""

    id: str = ""


class Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A write (``<prefix>.write``) or a procedure call (``<prefix>.rpc.<region>``).

    Exactly one of ``statements`` (run atomically, in order, in one transaction) and
    ``procedure`` (a registered name, called with ``args``/``kwargs``) is set.
    """

    id: str
    v: int = PROTOCOL_VERSION
    statements: list[Statement] | None = None
    procedure: str | None = None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    origin: str | None = None
    timeout_ms: int | None = None


class StatementResult(msgspec.Struct, kw_only=True):
    """Outcome of one statement: rows when it returned any, and the row count. Every field is
    always sent."""

    rowcount: int = -1
    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    types: list[int] | None = None


class ErrorInfo(msgspec.Struct, kw_only=True):
    """A typed error in a reply. Every field is always sent (nil when it does not apply), so a
    strict decoder in another language sees the same shape every time."""

    kind: str
    message: str
    sqlstate: str | None = None
    retryable: bool = False
    statement: int | None = None
    detail: str | None = None


class Reply(msgspec.Struct, kw_only=True):
    """The answer to a :class:`Request`.

    ``lsn``/``lsn_int`` give the primary's WAL flush position read after COMMIT returned: once a
    replica has replayed up to it, the write is visible there. A repeated request id gets the
    stored result with ``duplicate`` true and an LSN at least as new as the original commit.
    Every field is always sent (nil when it does not apply).
    """

    v: int = PROTOCOL_VERSION
    id: str = ""
    ok: bool = True
    results: list[StatementResult] = []
    value: Any = None
    lsn: str | None = None
    lsn_int: int | None = None
    region: str | None = None
    duplicate: bool = False
    server_ms: float | None = None
    error: ErrorInfo | None = None
    #: The primary's WAL timeline when it committed (added with a default: nil from older
    #: workers and where nothing committed). A replica promoted before replaying ``lsn`` is on
    #: a newer timeline: the tracker then knows the write did not reach it.
    timeline: int | None = None


class LsnUpdate(msgspec.Struct, kw_only=True):
    """Replay progress of one database, broadcast on ``<prefix>.lsn.<region>``.

    ``role`` is ``"replica"`` (``lsn`` = ``pg_last_wal_replay_lsn()``) or ``"primary"``
    (``lsn`` = ``pg_current_wal_flush_lsn()``). ``time`` is Unix seconds at the sender.

    Added with defaults (version-1 readers ignore them): ``primary_lsn``/``primary_lsn_int``,
    the newest primary position the sender had heard; ``lag_bytes`` and ``lag_seconds``, how far
    its replica is behind that (0 on the primary; seconds count from when the oldest position
    not yet replayed was announced, so an idle primary is no lag); ``replay_timestamp``,
    ``pg_last_xact_replay_timestamp()`` as Unix seconds; ``version``, the sender's writebus;
    ``timeline``, a primary's WAL timeline; ``fork_lsn``/``fork_lsn_int``, from a primary
    node that saw its database promoted, where the history forked from the old primary's;
    ``primary_timeline`` and ``primary_fork_lsn``/``primary_fork_lsn_int``, from a replica,
    the newest primary timeline (and its fork) the sender heard announced -- relayed, so every
    region's clients learn of a promotion.

    Always msgpack; every field is always sent.
    """

    region: str
    replica_id: str
    lsn: str
    lsn_int: int
    time: float
    in_recovery: bool
    role: str
    v: int = PROTOCOL_VERSION
    primary_lsn: str | None = None
    primary_lsn_int: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    replay_timestamp: float | None = None
    version: str = ""
    timeline: int | None = None
    fork_lsn: str | None = None
    fork_lsn_int: int | None = None
    primary_timeline: int | None = None
    primary_fork_lsn: str | None = None
    primary_fork_lsn_int: int | None = None


class Status(msgspec.Struct, kw_only=True):
    """A bus node's health and traffic, once a second on ``<prefix>.status.<region>``, in JSON
    (so ``nats sub 'writebus.status.>'`` is readable). Counts are since the node started unless
    named ``*_interval`` (the last ``interval`` seconds); latencies are over the last interval,
    the time a request spent in the worker."""

    region: str
    replica_id: str
    role: str
    version: str
    time: float
    uptime: float
    interval: float
    served: int
    served_interval: int
    errors: dict[str, int]
    errors_interval: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    in_flight: int
    concurrency: int
    pool_size: int
    pool_available: int
    pool_max: int
    pool_waiting: int
    lsn: str | None
    lsn_int: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    v: int = PROTOCOL_VERSION


def lsn_update(
    *,
    region: str,
    replica_id: str,
    lsn: int,
    role: str,
    in_recovery: bool,
    primary_lsn: int | None = None,
    lag_bytes: int | None = None,
    lag_seconds: float | None = None,
    replay_timestamp: float | None = None,
    version: str = "",
    timeline: int | None = None,
    fork_lsn: int | None = None,
    primary_timeline: int | None = None,
    primary_fork_lsn: int | None = None,
) -> LsnUpdate:
    """A progress broadcast for ``lsn`` (an integer), stamped with the current time."""
    return LsnUpdate(
        region=region,
        replica_id=replica_id,
        lsn=format_lsn(lsn),
        lsn_int=lsn,
        time=time.time(),
        in_recovery=in_recovery,
        role=role,
        primary_lsn=format_lsn(primary_lsn) if primary_lsn is not None else None,
        primary_lsn_int=primary_lsn,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        replay_timestamp=replay_timestamp,
        version=version,
        timeline=timeline,
        fork_lsn=format_lsn(fork_lsn) if fork_lsn is not None else None,
        fork_lsn_int=fork_lsn,
        primary_timeline=primary_timeline,
        primary_fork_lsn=format_lsn(primary_fork_lsn) if primary_fork_lsn is not None else None,
        primary_fork_lsn_int=primary_fork_lsn,
    )


def update_fork(update: LsnUpdate) -> int | None:
    """Where a promoted primary's history forked, as an :class:`LsnUpdate` carries it (its
    ``fork_lsn`` text, else ``fork_lsn_int``; None when it carries neither). Raises
    :class:`ProtocolError` on malformed text."""
    return _update_position(update.fork_lsn) if update.fork_lsn else update.fork_lsn_int


def update_primary_fork(update: LsnUpdate) -> int | None:
    """The fork a replica's monitor relays, as :func:`update_fork` reads ``fork_lsn``."""
    text = update.primary_fork_lsn
    return _update_position(text) if text else update.primary_fork_lsn_int


def update_lsn(update: LsnUpdate) -> int:
    """The position an :class:`LsnUpdate` carries: its ``lsn`` text (exact in every encoding),
    else ``lsn_int``. Raises :class:`ProtocolError` on malformed text."""
    return _update_position(update.lsn) if update.lsn else update.lsn_int


def _update_position(text: str) -> int:
    try:
        return parse_lsn(text)
    except ValueError as exc:
        raise ProtocolError(f"invalid LsnUpdate: {exc}") from exc


def reply_lsn(reply: Reply) -> int | None:
    """The position a :class:`Reply` carries: ``lsn_int``, else its ``lsn`` text (a worker
    that sends only the text); None when it has neither, or only malformed text."""
    if reply.lsn_int is not None or not reply.lsn:
        return reply.lsn_int
    try:
        return parse_lsn(reply.lsn)
    except ValueError:
        return None


def encode_hook(obj: Any) -> Any:
    # msgspec encodes datetime, date, time, timedelta (ISO 8601 duration), UUID, Decimal (text),
    # bytes and enums itself -- this hook never sees them; docs/protocol.md ("Values") lists the
    # result. What is left becomes text: inet/cidr addresses as psql shows them, and any other
    # driver object as its Python text form (not part of the contract: cast to text in SQL).
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, (Json, Jsonb)):  # psycopg's: the JSON text (a string goes untyped, so
        return _json_text(obj)  # a jsonb column takes it)
    return str(obj)


def _json_text(wrapper: Json | Jsonb) -> str:
    """A psycopg ``Json``/``Jsonb`` parameter's JSON text, dumped as psycopg would: with its
    own ``dumps``, else the one ``psycopg.types.json.set_json_dumps`` set globally."""
    dumps: Any = wrapper.dumps or getattr(JsonDumper, "_dumps", None) or json.dumps
    try:
        data = dumps(wrapper.obj)
    except (TypeError, ValueError) as exc:
        name = type(wrapper).__name__
        raise ProtocolError(f"a {name} parameter cannot be dumped: {exc}") from exc
    return data.decode() if isinstance(data, bytes) else str(data)


_msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)
_json_encoder = msgspec.json.Encoder(enc_hook=encode_hook)
_decoders: dict[tuple[str, type], Any] = {}


def _decoder(encoding: str, kind: type[Any]) -> Any:
    key = (encoding, kind)
    dec = _decoders.get(key)
    if dec is None:
        mod = msgspec.json if encoding == JSON else msgspec.msgpack
        dec = _decoders[key] = mod.Decoder(kind)
    return dec


def encoding_of(headers: dict[str, str] | None, data: bytes) -> Encoding:
    """The encoding of a message: its ``Content-Type`` header, else sniffed from the body."""
    if headers:
        value = headers.get(CONTENT_TYPE_HEADER) or headers.get(CONTENT_TYPE_HEADER.lower())
        if value:
            return JSON if "json" in value.lower() else MSGPACK
    if data[:1] in (b"{", b" ", b"\n", b"\r", b"\t"):
        return JSON
    return MSGPACK


def encode(message: msgspec.Struct, encoding: str = MSGPACK) -> bytes:
    """Encode a message in msgpack (default) or JSON. A value the format cannot carry (an
    integer past 64 bits) raises :class:`ProtocolError`: nothing was sent."""
    encoder = _json_encoder if encoding == JSON else _msgpack_encoder
    return _encoded(encoder, message)


def encoded_params(value: Any) -> bytes:
    """``value`` (parameters) encoded as msgpack, as :func:`encode` would."""
    return _encoded(_msgpack_encoder, value)


def _encoded(encoder: msgspec.msgpack.Encoder | msgspec.json.Encoder, value: Any) -> bytes:
    try:
        return encoder.encode(value)
    except OverflowError as exc:
        raise ProtocolError(
            f"a value cannot be sent ({exc}): integers travel as 64-bit numbers; send a larger "
            "one as a decimal.Decimal or a str"
        ) from exc
    except RecursionError as exc:  # hostile nesting depth
        raise LimitError("a value cannot be sent: it nests too deeply") from exc


def as_sent(value: Any) -> Any:
    """``value`` as a peer decodes it after msgpack carried it (a ``Decimal`` as its text, a
    tuple as a list...): what the primary region's direct path hands a procedure and returns,
    so they are what a bus worker hands and returns."""
    return _any_decoder.decode(_encoded(_msgpack_encoder, value))


_any_decoder = msgspec.msgpack.Decoder()


def decode(data: bytes, kind: type[T], encoding: str = MSGPACK) -> T:
    """Decode ``data`` as ``kind``; raise :class:`ProtocolError` with the reason on bad input."""
    try:
        return _decoder(encoding, kind).decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid {kind.__name__}: {exc}", data={"encoding": encoding}) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError.
        raise ProtocolError(
            f"undecodable {kind.__name__} ({encoding}): {exc}", data={"encoding": encoding}
        ) from exc
    except RecursionError as exc:  # hostile nesting depth
        raise ProtocolError(
            f"undecodable {kind.__name__} ({encoding}): nested too deeply",
            data={"encoding": encoding},
        ) from exc
