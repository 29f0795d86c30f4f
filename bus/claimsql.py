"""The SQL of the exactly-once record: its table, and the functions that claim request ids.

:mod:`writebus.bus.idempotency` says how a transaction uses them. The functions are versioned
by name: a later format gets a new function, created beside the old one when missing, so
workers of both versions serve side by side during a rolling upgrade (they take the same
locks and read the same table). ``since`` (Unix seconds, or NULL for everywhere) is where a
lookup starts: the partitions before it are pruned and not searched.

Version 3 is version 2 made safe from the caller's ``search_path`` (CVE-2018-1058's pattern):
each function runs with ``search_path = pg_catalog, pg_temp``, and the lock key's seed is an
``int8``. Version 2 called ``hashtextextended(i, 7207)`` and ``unnest(ids)`` by bare name, with
an ``int4`` seed: anyone who can create a function in a schema on the worker's path (``public``,
before Postgres 15) could define ``hashtextextended(text, integer)`` or ``unnest(text[])``,
which match the arguments better than ``pg_catalog``'s, and have it run as the worker's role
-- or hand out other lock keys, so that a retry no longer waits for its original. Unshadowed,
both versions take the same locks.
"""

from __future__ import annotations

from typing import Final

SCHEMA_SQL: Final = """
CREATE SCHEMA IF NOT EXISTS writebus;
CREATE TABLE IF NOT EXISTS writebus.applied (
    id          text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    digest      bytea,
    result      bytea,
    PRIMARY KEY (id, applied_at)
) PARTITION BY RANGE (applied_at);
"""

#: Step 1: one transaction-scoped advisory lock per id, in a fixed order. Every claim
#: function takes exactly these locks, so that they serialise each other.
LOCK_IDS: Final = """
    PERFORM pg_catalog.pg_advisory_xact_lock(k.h) FROM (
        SELECT DISTINCT pg_catalog.hashtextextended(i, 7207::int8) AS h
        FROM pg_catalog.unnest(ids) AS i ORDER BY 1
    ) k;
"""
#: Every function's header after its signature: its language, and the ``search_path`` it
#: runs with, whatever the caller's (see the module's docstring).
_HEADER: Final = "LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp"

#: Steps 1 and 2: the ids' locks, then the rows of those already applied.
CLAIM_FUNCTION_SQL: Final = f"""
CREATE FUNCTION writebus.claim_v3(ids text[], since float8)
RETURNS TABLE (id text, digest bytea, result bytea)
{_HEADER} AS $claim$
BEGIN{LOCK_IDS}
    -- A new statement, so a new snapshot: taken after every lock above was granted.
    RETURN QUERY SELECT a.id, a.digest, a.result FROM writebus.applied a
        WHERE a.id = ANY(ids)
        AND a.applied_at >= coalesce(pg_catalog.to_timestamp(since), '-infinity');
END
$claim$
"""

#: Steps 1 and 2 for a group's first try: the same locks and lookup (``claim_v3`` itself),
#: raising SQLSTATE ``WB001`` when an id was already applied.
#:
#: A flattened version, with its own ``EXISTS`` lookup, was tried and dropped. On a generic
#: plan, pruned as the executor starts, it took 0.2 ms less with a day's 27 partitions, but
#: running a generic plan locks every partition first: a claim then waits behind a lock on an
#: old partition (a long query on it with its DROP queued), which a dated claim never touches
#: otherwise (``tests/test_dated_ids.py``). Left to choose, PL/pgSQL took the generic plan for
#: that ``EXISTS`` once the partitions looked empty to its estimates; forced to custom plans it
#: was 0.03-0.07 ms slower than this one.
CLAIM_FRESH_FUNCTION_SQL: Final = f"""
CREATE FUNCTION writebus.claim_fresh_v3(ids text[], since float8)
RETURNS void
{_HEADER} AS $claim$
BEGIN
    IF EXISTS (SELECT 1 FROM writebus.claim_v3(ids, since)) THEN
        RAISE EXCEPTION 'a request id was already applied' USING ERRCODE = 'WB001';
    END IF;
END
$claim$
"""

#: Step 1 alone, for ids nobody can have applied (``unseen``, see
#: :func:`writebus.bus.idempotency.claim_sql`): the same locks, so that a retry's claim still
#: waits for this transaction, and no lookup. No rows, in ``claim_v3``'s shape.
CLAIM_UNSEEN_FUNCTION_SQL: Final = f"""
CREATE FUNCTION writebus.claim_unseen_v3(ids text[])
RETURNS TABLE (id text, digest bytea, result bytea)
{_HEADER} AS $claim$
BEGIN{LOCK_IDS}END
$claim$
"""

#: ``(signature, CREATE statement)`` of every function this version calls.
FUNCTIONS: Final = (
    ("writebus.claim_v3(text[], float8)", CLAIM_FUNCTION_SQL),
    ("writebus.claim_fresh_v3(text[], float8)", CLAIM_FRESH_FUNCTION_SQL),
    ("writebus.claim_unseen_v3(text[])", CLAIM_UNSEEN_FUNCTION_SQL),
)
