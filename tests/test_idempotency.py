"""The exactly-once table's claim function, on the real primary."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from writebus.bus import idempotency


async def _connect(stack: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True, **kwargs)


async def test_claim_waits_for_a_racing_original_and_sees_its_commit(stack: Any) -> None:
    """A claim blocked on the id's lock returns the row the lock holder committed meanwhile:
    the lookup runs after the lock was granted, on a fresh snapshot. (With the lookup on the
    snapshot the claim started with, the row would be missing and the id applied twice.)"""
    rid = uuid.uuid4().hex
    first, second = await _connect(stack), await _connect(stack)
    try:
        await idempotency.ensure_schema(first)
        await first.execute("BEGIN")
        cur = await first.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid]))
        assert await cur.fetchall() == []

        async def racing_claim() -> list[Any]:
            await second.execute("BEGIN")
            # This statement's own snapshot is taken before it waits for the lock.
            cur = await second.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid]))
            rows = await cur.fetchall()
            await second.execute("ROLLBACK")
            return rows

        racing = asyncio.create_task(racing_claim())
        await asyncio.sleep(0.3)
        assert not racing.done()  # waiting on the advisory lock
        await first.execute(idempotency.STORE_SQL,
                            idempotency.store_params([(rid, b"digest", b"result")]))  # fmt: skip
        await first.execute("COMMIT")
        rows = await asyncio.wait_for(racing, 5)
        assert [(r[0], bytes(r[1]), bytes(r[2])) for r in rows] == [(rid, b"digest", b"result")]
    finally:
        await first.close()
        await second.close()


async def test_ensure_schema_keeps_another_roles_claim_function(stack: Any) -> None:
    """The bus and an application's direct writes may connect as different roles: a role that
    does not own the claim function still starts (the function is created when missing, never
    replaced), and can claim with it."""
    role = f"wb_{uuid.uuid4().hex[:8]}"
    admin = await _connect(stack)
    try:
        await idempotency.ensure_schema(admin)
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        cur = await admin.execute("SELECT current_database()")
        database = (await cur.fetchone() or [""])[0]
        await admin.execute(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
        await admin.execute(f"GRANT USAGE, CREATE ON SCHEMA writebus TO {role}")
        await admin.execute(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA writebus TO {role}")
        other = await _connect(stack, user=role)
        try:
            await idempotency.ensure_schema(other)
            rid = uuid.uuid4().hex
            async with other.transaction():
                cur = await other.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid, rid]))
                assert await cur.fetchall() == []
        finally:
            await other.close()
        cur = await admin.execute(
            "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = "
            "'writebus.claim_v1(text[])'::regprocedure"
        )
        assert await cur.fetchone() != (role,)
    finally:
        # Anything the role made (a partition, should an hour have turned) goes to the admin.
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
