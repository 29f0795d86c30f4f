"""Exactly-once writes: applied request ids recorded on the primary, in the write's transaction.

One row per applied request, written once, with its result: ``writebus.applied(id,
applied_at, digest, result)``, range-partitioned by ``applied_at`` so that expiry drops whole
partitions instead of deleting rows (no dead tuples for autovacuum to chase).

How a transaction applies requests exactly once:

1. It takes a transaction-scoped advisory lock per request id (sorted, so two transactions
   never wait on each other's ids in a cycle). A retry racing its original -- on this worker or
   another -- waits there until the original commits or rolls back.
2. It looks the ids up: in every partition, or, when every id is dated (a UUIDv7,
   :mod:`writebus.client.ids`), only from the earliest date less :data:`ID_CLOCK_SLACK` on
   (:func:`lookup_since`). An id already there is answered with its stored result and not run
   again; one stored for a *different* request (another digest) is refused with
   :class:`IdempotencyKeyReusedError`.
3. It runs the rest, then records them in one multi-row INSERT with their results, then
   COMMIT -- the lock is released only then. A dated id's record is stored no earlier than its
   date less the slack (:func:`record_floor`), so the lookup of step 2 always reaches it.

Steps 1 and 2 are one command, :data:`CLAIM_SQL`, a call of the PL/pgSQL function
``writebus.claim_v3(ids, since)``: a VOLATILE function takes a fresh snapshot for each statement it
runs, so its lookup, made after the locks were granted, sees what a racing original committed
while this transaction waited (two statements sent in one pipeline did the same, for one more
command per transaction).

A group's first try, which sends its statements in the same round trip as the claim, uses
``writebus.claim_fresh_v3(ids, since)`` instead (:data:`CLAIM_FRESH_SQL`): the same claim, raising
:data:`REPEATED_SQLSTATE` when an id was already applied, so that the statements after it in
the round trip do not run; the repeats are then looked up and answered.

A write whose id nobody can have applied (*unseen*: made by the client for this very call, in
its first try, see :func:`claim_sql`) is claimed with ``writebus.claim_unseen_v3(ids)``
(:data:`CLAIM_UNSEEN_SQL`): step 1 alone, the same locks, and no lookup -- the lookup is most
of a lone write's claim, 0.1-0.3 ms on the primary.

A partition's primary key cannot span partitions, so uniqueness across them rests on step 1;
``(id, applied_at)`` keys each partition and its index serves step 2. A table of the old
format (one unpartitioned table, a claim row then an update) is migrated on first start.
The table's and the functions' SQL is in :mod:`writebus.bus.claimsql`.

Partitions cover one hour each; :func:`writebus.bus.partitions.maintain` makes the current
hour's and the next two, and drops those entirely older than the window, without making writes
wait (:mod:`writebus.bus.partitions`). An id is therefore remembered for at least the window and
at most an hour more (a dated id from a fast client clock, up to about four).
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import psycopg

from writebus.bus import claimsql, partitions
from writebus.bus.arrays import TextArray
from writebus.bus.partitions import (
    PARTITION_SPAN,
    PARTITIONS_AHEAD,
    partition_bounds,
    partition_name,
)
from writebus.bus.pg import lock_holders
from writebus.client.errors import ConfigError, IdempotencyKeyReusedError
from writebus.client.ids import id_time
from writebus.client.log import get_logger
from writebus.client.protocol import Request, StatementResult, encode_hook

log = get_logger("writebus.bus.idempotency")

#: Steps 1 and 2 as one command: lock the ids, then the rows of those already applied (with
#: what they asked for and what they got). Parameters: :func:`claim_params`.
CLAIM_SQL: Final = "SELECT id, digest, result FROM writebus.claim_v3(%s::text[], %s::float8)"
#: Steps 1 and 2 for a transaction that runs its statements in the same round trip (a
#: group's first try): an id already applied is an error, :data:`REPEATED_SQLSTATE`, which
#: stops the statements after it -- a client's retry does not run them again.
CLAIM_FRESH_SQL: Final = "SELECT writebus.claim_fresh_v3(%s::text[], %s::float8)"
#: Step 1 alone, for unseen ids (:func:`claim_sql`): their locks, and no rows. Parameters:
#: :func:`claim_params` with ``unseen``.
CLAIM_UNSEEN_SQL: Final = "SELECT id, digest, result FROM writebus.claim_unseen_v3(%s::text[])"
#: The SQLSTATE :data:`CLAIM_FRESH_SQL` raises when an id was already applied.
REPEATED_SQLSTATE: Final = "WB001"
#: How a transaction that claims ids begins, whatever the database's default isolation: under
#: REPEATABLE READ or SERIALIZABLE the lookup would read the snapshot taken when the claim
#: started -- before it waited for the lock -- and miss what a racing original committed.
BEGIN_SQL: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"
#: Step 3: record the applied requests, one row each, with :data:`STORE_VALUES_SQL` followed by
#: one :data:`STORE_ROW_SQL` per request (``id, floor, digest, result``: :func:`store_row`); a
#: dated id's row no earlier than its floor (:func:`record_floor`). A group's last round trip
#: writes the rows out (:mod:`writebus.bus.literals`); a procedure's transaction binds them
#: (:func:`store_statement`). Planned and run, a lone record costs the primary about 0.1 ms
#: less as ``VALUES`` than through ``unnest`` of four arrays.
STORE_VALUES_SQL: Final = "INSERT INTO writebus.applied (id, applied_at, digest, result) VALUES "
STORE_ROW_SQL: Final = (
    "(%s, greatest(pg_catalog.now(), pg_catalog.to_timestamp(%s::pg_catalog.float8)), %s, %s)"
)
#: How far a dated request id (:mod:`writebus.client.ids`) may be ahead of the primary's clock
#: and still have its record stored where its date says (see :func:`record_floor`). Never
#: lower it: records stored under a larger slack would sit before a smaller one's lookups.
ID_CLOCK_SLACK: Final = 3600.0
#: An id dated further ahead than this is taken as undated (looked up everywhere): no clock
#: is that wrong, so its "date" is another kind of id that happens to parse as a UUIDv7 (a
#: draft-era generator counting seconds reads as the 23rd century). Its record is then
#: stored at ``now()``; the id would only read as dated again ten years on, long after the
#: retention window has dropped that record.
ID_DATE_HORIZON: Final = 10 * 365 * 86400.0
#: A claim looks everywhere when an id is dated more than this ahead (:func:`lookup_since`).
LOOKUP_AHEAD: Final = 86400.0
#: How long the schema step at a worker's start waits for the table's lock before it says
#: who holds it, and tries again (it cannot serve writes without the current partitions).
SCHEMA_LOCK_TIMEOUT: Final = "1s"
#: How far ahead a record's floor surely has a partition (:func:`far_ahead`): the current
#: partition and :data:`PARTITIONS_AHEAD` more are made by the database's clock (which
#: :func:`far_ahead` takes this worker's for: under NTP they differ by far less than a
#: span); one span is kept back for a maintenance pass that has not yet run since the hour
#: turned.
RECORD_AHEAD: Final = (PARTITIONS_AHEAD - 1) * PARTITION_SPAN


class StoredResult(msgspec.Struct, kw_only=True):
    """What a repeated request id is answered with."""

    results: list[StatementResult] = []
    value: Any = None


#: Results as replies carry them (protocol.encode_hook): a duplicate answers with the same value.
_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)
#: Parameters as the wire carries them (a psycopg Jsonb as its JSON text): a request sent
#: directly and the same request received over the bus have one digest. Maps by sorted key:
#: a resend that builds its arguments in another order (another language's client, a map
#: rebuilt by a retry job) is the same request.
_digest_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook, order="deterministic")
#: Maps in the order they came, as records stored by earlier releases were digested.
_legacy_digest_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)
_decoder = msgspec.msgpack.Decoder(StoredResult)


def request_digest(req: Request) -> bytes:
    """16 bytes identifying what ``req`` asks for: its statements and parameters, or its
    procedure and arguments -- not its id, version, origin or per-attempt timeout, which a
    retry may change, nor the order of a map's keys (string keys: a request holding a map
    with others, valid msgpack, is digested whole in the order it came)."""
    try:
        return _digest(req, _digest_encoder)
    except TypeError:  # msgspec sorts maps by string keys only
        return _digest(req, _legacy_digest_encoder)


def _digest(req: Request, encoder: msgspec.msgpack.Encoder) -> bytes:
    body = [
        [[s.sql, s.params] for s in req.statements] if req.statements is not None else None,
        req.procedure,
        req.args,
        req.kwargs,
    ]
    return hashlib.blake2b(encoder.encode(body), digest_size=16).digest()


def encode_result(results: list[StatementResult], value: Any) -> bytes:
    """The stored form of a request's result."""
    return _encoder.encode(StoredResult(results=results, value=value))


def check_digest(req: Request, stored: bytes | None, digest: bytes) -> None:
    """Raise :class:`IdempotencyKeyReusedError` when a repeat of ``req.id`` asks for
    something else than the request first applied under it (rows without a digest, from
    before digests were stored, are taken as matching; so are rows an earlier release
    digested with maps in their order)."""
    if stored is None or bytes(stored) == digest or bytes(stored) == _digest(
        req, _legacy_digest_encoder
    ):
        return
    raise IdempotencyKeyReusedError(
        f"request id {req.id!r} was already used for a different request; nothing was "
        "applied. Use a new id for a new request; resend the identical request to learn "
        "the first one's outcome"
    )


def stored_answer(req: Request, row: tuple[Any, ...], digest: bytes) -> StoredResult:
    """The answer to a repeat of ``req.id`` from its :data:`CLAIM_SQL` row (digest checked)."""
    _, stored_digest, blob = row
    check_digest(req, stored_digest, digest)
    return _decoder.decode(blob) if blob is not None else StoredResult()


def record_floor(request_id: str, now: float | None = None) -> float | None:
    """The earliest ``applied_at`` (Unix seconds) a dated id's record may have: its date less
    :data:`ID_CLOCK_SLACK`. None for an id without a date, or dated past
    :data:`ID_DATE_HORIZON` from ``now`` (default: the current time).

    A floor past the partitions made ahead (a client clock hours fast) cannot be stored: the
    write then fails at its record, after the lookup and under the id's lock, as a rejection
    (SQLSTATE 23514, not applied) -- never as a second application."""
    made = id_time(request_id)
    if made is None or made > (time.time() if now is None else now) + ID_DATE_HORIZON:
        return None
    return made - ID_CLOCK_SLACK


def lookup_since(ids: Sequence[str]) -> float | None:
    """Where the claim of ``ids`` looks from: the earliest floor, when every id is dated and
    none more than :data:`LOOKUP_AHEAD` ahead (a record is never stored before its floor, see
    :data:`STORE_ROW_SQL`); else None, everywhere.

    Ids dated far ahead are looked up everywhere: one stored as undated (past
    :data:`ID_DATE_HORIZON` then) reads as dated once the clock gets within the horizon --
    to a worker whose clock is ahead, minutes later -- and must still be found. Such ids
    cannot be recorded as dated anyway (their floor is past the partitions made ahead), so
    looking everywhere for them costs nothing that matters."""
    now = time.time()
    floors = [record_floor(i, now) for i in ids]
    if not floors or None in floors:
        return None
    since = min(f for f in floors if f is not None)
    if max(f for f in floors if f is not None) > now + LOOKUP_AHEAD:
        return None
    return since


def far_ahead(request_id: str, now: float | None = None) -> bool:
    """Whether a dated id's record floor is past the partitions made ahead of ``now`` (its
    client's clock is hours fast): its write cannot be recorded and will be rejected, so it
    runs alone rather than failing a group's COMMIT."""
    floor = record_floor(request_id, now)
    return floor is not None and floor > (time.time() if now is None else now) + RECORD_AHEAD


def claim_sql(*, unseen: bool = False, first_try: bool = False) -> str:
    """The claim's command: :data:`CLAIM_SQL`, :data:`CLAIM_FRESH_SQL` for a group's
    ``first_try``, or :data:`CLAIM_UNSEEN_SQL` when the ids are ``unseen``.

    ``unseen`` is the caller's promise that no transaction can have recorded these ids, nor
    can record them while this one runs, except a retry that takes their locks after this
    transaction took them. The primary-region direct path can make it for an id the client
    made for the call, in the call's first try on a connection: the client itself sends
    COMMIT, only after the round trip that took the locks, and retries only once a try has
    failed -- so a retry's claim waits for this transaction, then looks up. A bus worker can
    never make it: a request delayed in NATS can arrive after its retry committed."""
    if unseen:
        return CLAIM_UNSEEN_SQL
    return CLAIM_FRESH_SQL if first_try else CLAIM_SQL


def claim_params(
    ids: Sequence[str], *, unseen: bool = False, array: Callable[[Sequence[str]], Any] = TextArray
) -> list[Any]:
    """Parameters of :func:`claim_sql`'s command for request ``ids``; ``array`` makes their
    ``text[]`` (a bound one by default)."""
    return [array(ids)] if unseen else [array(ids), lookup_since(ids)]


def store_row(request_id: str, digest: bytes, result: bytes) -> list[Any]:
    """Parameters of one :data:`STORE_ROW_SQL`: the id, its record floor, digest and result."""
    return [request_id, record_floor(request_id), digest, result]


def store_statement(rows: Sequence[tuple[str, bytes, bytes]]) -> tuple[str, list[Any]]:
    """Step 3 as one bound statement for ``(id, digest, result)`` rows, with its parameters."""
    sql_text = STORE_VALUES_SQL + ", ".join([STORE_ROW_SQL] * len(rows))
    return sql_text, [p for row in rows for p in store_row(*row)]


# -- schema and partitions -----------------------------------------------------------------


async def ensure_schema(
    conn: psycopg.AsyncConnection[Any],
    window: float | None,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Create the table (and its partitions) if missing. A table of the old, unpartitioned
    format is migrated: its rows inside the window are copied into the new one, then it is
    dropped. Then, with a ``window``, :func:`~writebus.bus.partitions.maintain` drops the
    partitions past it. Safe with concurrent workers.

    ``window=None`` is for a caller that does not know the bus' window (an application's
    direct writes): it creates, and never drops or leaves out, a record the bus may still
    need -- with a window shorter than the bus', a retry past it would run again.

    Making a partition waits for a transaction holding the table in a mode stronger than
    writes do (DDL, ``VACUUM``, ``ANALYZE``, ``LOCK TABLE``): as long as that takes,
    :data:`SCHEMA_LOCK_TIMEOUT` at a time, saying who holds the lock (warning
    ``idempotency.schema_waiting``, then every tenth try). ``now`` (for tests) defaults to
    the database's clock (:func:`.partitions.database_now`)."""
    now = now or await partitions.database_now(conn)
    try:
        await _make(conn, window, now)
        if window is not None and await _owned(conn):
            await partitions.maintain(conn, window, now=now)
    except psycopg.errors.InsufficientPrivilege as exc:
        await _not_allowed(conn, now, exc, bus=window is not None)


async def _make(
    conn: psycopg.AsyncConnection[Any], window: float | None, now: datetime.datetime
) -> None:
    """Make what is missing; the bus (a ``window``) always runs the DDL, which checks its
    rights (CREATE on the database) at its start."""
    tries = races = 0
    while window is not None or not await _made(conn, partition_bounds(now)):
        try:
            await _ensure_schema(conn, window, now)
            return
        except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            # A worker of an older version made the same partition meanwhile: look again.
            races += 1
            if races > 3:
                raise
        except psycopg.errors.LockNotAvailable:
            tries += 1
            if tries == 1 or tries % 10 == 0:
                log.warning(
                    "idempotency.schema_waiting",
                    reason="writebus.applied is locked by another transaction; its partitions "
                    "are made once it ends",
                    tries=tries,
                    holders=await lock_holders(conn, "writebus.applied"),
                )


async def _owned(conn: psycopg.AsyncConnection[Any]) -> bool:
    """The bus makes and drops partitions for as long as it runs, which takes owning the
    table. A role that does not is told at its start (an error in the log: its maintenance
    will fail, and unless another worker's role owns the table the partitions made ahead run
    out within hours); it still serves, since another worker may maintain the table."""
    cur = await conn.execute(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c "
        "WHERE c.oid = pg_catalog.to_regclass('writebus.applied')::pg_catalog.oid"
    )
    row = await cur.fetchone()
    if row and row[0]:
        return True
    log.error(
        "idempotency.not_owner",
        reason="this bus's database role does not own writebus.applied, so it cannot make or "
        "drop its hourly partitions: run one worker with the owning role, or make this role "
        "the owner",
    )
    return False


async def _made(
    conn: psycopg.AsyncConnection[Any],
    bounds: Sequence[tuple[datetime.datetime, datetime.datetime]],
) -> bool:
    """Whether the table (partitioned: not the old format), this version's functions and the
    partitions of ``bounds`` all exist, so there is nothing to make: read from the catalog,
    which any role may, before any DDL, which needs rights an application's role may lack."""
    cur = await conn.execute(
        "SELECT coalesce((SELECT c.relkind = 'p' FROM pg_catalog.pg_class c "
        "  WHERE c.oid = pg_catalog.to_regclass('writebus.applied')::pg_catalog.oid), false), "
        "(SELECT pg_catalog.count(*) FROM pg_catalog.unnest(%s::text[]) f "
        "  WHERE pg_catalog.to_regprocedure(f) IS NOT NULL), "
        "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "  ON n.oid = c.relnamespace WHERE n.nspname = 'writebus' AND c.relispartition "
        "  AND c.relname::pg_catalog.text = ANY(%s::text[]))",
        [[sig for sig, _ in claimsql.FUNCTIONS], [partition_name(b[0]) for b in bounds]],
    )
    row = await cur.fetchone()
    return row is not None and row == (True, len(claimsql.FUNCTIONS), len(bounds))


async def _not_allowed(
    conn: psycopg.AsyncConnection[Any], now: datetime.datetime, exc: psycopg.Error, *, bus: bool
) -> None:
    """This role may not make (or read) what is missing. Writes can go on while the table,
    the functions and the current hour's partition exist: a warning (for the bus, an error:
    it is the one that should make them, and a worker whose role may will). Otherwise a
    one-line :class:`~writebus.client.errors.ConfigError`."""
    why = exc.diag.message_primary or str(exc)
    try:
        usable = await _made(conn, partition_bounds(now, ahead=0))
    except psycopg.errors.InsufficientPrivilege:
        usable = False
    if usable:
        (log.error if bus else log.warning)(
            "idempotency.partitions_not_made",
            reason="this database role may not make the exactly-once table's partitions ahead; "
            + ("a bus worker whose role owns writebus.applied must" if bus else "the bus does"),
            error=why,
        )
        return
    if bus:
        raise ConfigError(
            f"the bus's database role may not create writebus' exactly-once table and its "
            f"hourly partitions ({why}): it needs CREATE on the database and on schema "
            "writebus, and to own writebus.applied"
        ) from None
    raise ConfigError(
        f"the application's database role may not use or create writebus' exactly-once "
        f"table ({why}): start a bus node in the primary region first, whose role makes it, "
        "and grant this role USAGE on schema writebus and SELECT, INSERT on writebus.applied"
    ) from None


async def _ensure_schema(
    conn: psycopg.AsyncConnection[Any], window: float | None, now: datetime.datetime
) -> None:
    async with conn.transaction():
        await partitions.begin_schema_step(conn, SCHEMA_LOCK_TIMEOUT)
        cur = await conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'writebus' AND c.relname = 'applied'"
        )
        row = await cur.fetchone()
        old = row is not None and row[0] == "r"  # an ordinary table: the old format
        if old:
            await conn.execute("ALTER TABLE writebus.applied RENAME TO applied_v1")
        await conn.execute(claimsql.SCHEMA_SQL)
        await _create_claim_function(conn)
        horizon = await _migration_horizon(conn, window, now) if old else None
        await partitions.create_partitions(conn, partition_bounds(now, since=horizon))
        if old:
            await conn.execute(
                "INSERT INTO writebus.applied (id, applied_at, digest, result) "
                "SELECT id, applied_at, digest, result FROM writebus.applied_v1 "
                "WHERE applied_at >= %s",
                [partition_bounds(now, since=horizon)[0][0]],
            )
            await conn.execute("DROP TABLE writebus.applied_v1")


async def _migration_horizon(
    conn: psycopg.AsyncConnection[Any], window: float | None, now: datetime.datetime
) -> datetime.datetime:
    """From when an old table's rows are kept: the window's start, or without a window its
    oldest row's time (every row: only the bus knows which it may forget)."""
    if window is not None:
        return now - datetime.timedelta(seconds=window)
    cur = await conn.execute("SELECT min(applied_at) FROM writebus.applied_v1")
    row = await cur.fetchone()
    oldest = row[0] if row else None
    return min(oldest, now) if oldest is not None else now


async def _create_claim_function(conn: psycopg.AsyncConnection[Any]) -> None:
    # Created only when missing, never replaced: CREATE OR REPLACE needs the function's owner,
    # and the bus and the applications' direct writes may connect as different roles.
    for signature, create in claimsql.FUNCTIONS:
        cur = await conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", [signature])
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.execute(create)
