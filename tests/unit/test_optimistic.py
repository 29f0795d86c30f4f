"""Pure decisions of a group's first try (:mod:`writebus.bus.optimistic`). The paths that reach
the primary are tested on it in tests/test_literals.py and tests/test_group_commit.py."""

from __future__ import annotations

import psycopg

from writebus.bus.optimistic import _failed_alone
from writebus.client.protocol import Request, Statement


def _req(*sqls: str) -> Request:
    return Request(id="r", statements=[Statement(sql=s, params=[1]) for s in sqls])


def test_an_error_raised_in_this_process_is_not_taken_for_the_statements() -> None:
    """No SQLSTATE: the client raised it (reading results, a broken protocol state), so the
    careful way must find the real answer."""
    assert psycopg.InterfaceError("the connection is in a bad state").sqlstate is None
    assert not _failed_alone([_req("INSERT INTO t VALUES (%s)")], psycopg.InterfaceError("x"))


def test_only_a_lone_request_of_one_statement_is_answered_from_its_first_try() -> None:
    exc = psycopg.errors.UniqueViolation("duplicate key")
    assert exc.sqlstate == "23505"
    assert _failed_alone([_req("INSERT INTO t VALUES (%s)")], exc)
    assert not _failed_alone([_req("INSERT INTO t VALUES (%s)", "UPDATE t SET n = %s")], exc)
    assert not _failed_alone([_req("INSERT INTO t VALUES (%s)")] * 2, exc)
