"""Checking a decoded request against the protocol's rules and limits (docs/protocol.md):
pure, shared by the bus workers and the primary region's direct writes."""

from __future__ import annotations

import re

from writebus.client.errors import ForbiddenError, LimitError, ProtocolError
from writebus.client.protocol import (
    MAX_PARAM_BYTES,
    MAX_PARAMS_PER_STATEMENT,
    MAX_REQUEST_ID_LENGTH,
    MAX_STATEMENTS,
    PROTOCOL_VERSION,
    Request,
    Statement,
    encoded_params,
)

#: How deep arrays may nest in a statement's parameters (Postgres arrays have at most 6
#: dimensions), and lists and maps in a procedure's arguments: deeper, the worker's own
#: recursion (the driver's adaptation, the exactly-once digest) would fail the whole group.
MAX_PARAM_DEPTH = 32


def _too_deep(value: object, limit: int) -> bool:
    """Whether lists and maps in ``value`` nest more than ``limit`` deep (no recursion)."""
    containers = (list, tuple, dict)
    level = [value] if isinstance(value, containers) else []
    for _ in range(limit):
        level = [
            inner
            for item in level
            for inner in (item.values() if isinstance(item, dict) else item)
            if isinstance(inner, containers)
        ]
        if not level:
            return False
    return True


def param_bytes(req: Request) -> int:
    """Encoded size (msgpack) of a request's statement params, procedure args and kwargs."""
    params = [s.params for s in req.statements or () if s.params is not None]
    return len(encoded_params([params, req.args, req.kwargs]))


# BEGIN/COMMIT/ROLLBACK/SAVEPOINT... inside a request would end the request's own transaction
# (and with it the exactly-once record) half-way through. Postgres drops empty statements, so
# ";COMMIT" is one command, and its block comments nest: both are skipped before the keyword.
_TRANSACTION_CONTROL = re.compile(
    r"\(*\s*(?:BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b",
    re.IGNORECASE,
)
# COPY ... FROM STDIN / TO STDOUT needs the connection to itself; in the pipeline a group runs
# in, psycopg cannot send it (an error with no SQLSTATE, like a lost connection's).
_COPY = re.compile(r"COPY\b", re.IGNORECASE)
_SKIPPED = re.compile(r"(?:\s|;|--[^\n\r]*(?:[\n\r]|\Z))*")  # "--" ends at \n or \r
# A worker's connections are pooled: what outlasts a request's transaction reaches later
# requests on the same connection -- a session setting (SET without LOCAL, SET ROLE, RESET,
# DISCARD), a temporary table kept past COMMIT (SELECT ... INTO TEMP cannot drop at commit), a
# named prepared statement, LISTEN. And the worker's commits must flush before they answer:
# a request may not turn synchronous_commit down, even for its own transaction.
_SESSION_COMMAND = re.compile(r"(?:RESET|DISCARD|PREPARE|LISTEN)\b", re.IGNORECASE)
_SET = re.compile(r"SET\b", re.IGNORECASE)
_TRANSACTION_SCOPED = re.compile(r"(?:LOCAL|CONSTRAINTS?|TRANSACTION)\b", re.IGNORECASE)
_TEMP = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b"
    r"|CREATE\b[^;('\"]*?\bpg_temp\s*\.|SELECT\b[^;'\"]*?\bINTO\s+(?:TEMP|TEMPORARY)\b",
    re.IGNORECASE,
)
_COMMIT_DROP = re.compile(r"\bON\s+COMMIT\s+DROP\b", re.IGNORECASE)
_SYNC_COMMIT = re.compile(r"synchronous_commit", re.IGNORECASE)
_SYNC_COMMIT_REASON = (
    "synchronous_commit is the worker's: its commits must flush before they answer"
)
# Something set for the rest of the transaction -- SET LOCAL, SET CONSTRAINTS, set_config(...,
# true), a temporary table dropped at commit -- would reach the requests grouped after it in
# the same transaction: such a request runs in a transaction of its own
# (:func:`keeps_to_itself`).
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)
# set_config(name, value, true): its third argument a plain true, as the statement writes it.
_SET_CONFIG_LOCAL = re.compile(r"\bset_config\s*\([^()]*,\s*true\s*\)", re.IGNORECASE)


def _sets_config(command: str) -> bool:
    """Whether ``command`` calls ``set_config`` (a cheap look first: statements are large)."""
    return "set_config" in command.lower() and _SET_CONFIG.search(command) is not None


def outlasts(command: str) -> str | None:
    """Why a statement (``command``: from its first token, :func:`_first_command`) would
    outlast its request on the worker's pooled connection, or weaken its commit; None if it
    would not."""
    if _SESSION_COMMAND.match(command):
        return "a session-level command"
    if _SET.match(command):
        rest = _first_command(command[3:])
        if not _TRANSACTION_SCOPED.match(rest):
            return "SET without LOCAL lasts for the session"
        if _SYNC_COMMIT.search(rest[:2000]):
            return _SYNC_COMMIT_REASON
    if _sets_config(command):
        if _SYNC_COMMIT.search(command):
            return _SYNC_COMMIT_REASON
        if len(_SET_CONFIG.findall(command)) != len(_SET_CONFIG_LOCAL.findall(command)):
            return "set_config(..., false) lasts for the session: pass true, as a plain argument"
    if _TEMP.match(command) and not _COMMIT_DROP.search(command):
        return "a temporary table lasts for the session unless it is created ON COMMIT DROP"
    return None


_COMMENT_MARK = re.compile(r"/\*|\*/")


def _first_command(sql: str) -> str:
    """``sql`` from its first token on: past whitespace, empty statements (``;``), line
    comments and block comments, nested as Postgres nests them."""
    pos = 0
    while True:
        pos = _SKIPPED.match(sql, pos).end()  # type: ignore[union-attr]
        if not sql.startswith("/*", pos):
            return sql[pos:]
        depth, pos = 1, pos + 2
        while depth:  # from mark to mark, not character by character: a long comment is cheap
            mark = _COMMENT_MARK.search(sql, pos)
            if mark is None:
                return ""  # never closed: nothing follows it
            depth, pos = depth + (1 if mark.group() == "/*" else -1), mark.end()


def storable_id(request_id: str) -> bool:
    """Whether ``request_id`` can be recorded: 1 to 128 characters, without NUL (the record's
    text column cannot hold one). An id that cannot was never applied."""
    return 0 < len(request_id) <= MAX_REQUEST_ID_LENGTH and "\x00" not in request_id


def validate_request(
    req: Request,
    *,
    max_statements: int = MAX_STATEMENTS,
    allow_statements: bool = True,
    allow_sql: bool = True,
    max_param_bytes: int = MAX_PARAM_BYTES,
) -> None:
    """Check a decoded request against the protocol's rules and limits.

    ``allow_statements`` is false on subjects that run procedures only (``<prefix>.rpc.*``);
    ``allow_sql`` false refuses statements everywhere (procedures-only mode). Raises
    :class:`ProtocolError`, or its subclasses :class:`LimitError` and :class:`ForbiddenError`.
    """
    if req.v > PROTOCOL_VERSION or req.v < 1:
        raise ProtocolError(
            f"unsupported protocol version {req.v}; this worker speaks 1..{PROTOCOL_VERSION}"
        )
    if not storable_id(req.id):
        raise ProtocolError(
            f"request id must be 1..{MAX_REQUEST_ID_LENGTH} characters, without NUL"
        )
    has_sql = req.statements is not None
    has_proc = req.procedure is not None
    if has_sql == has_proc:
        raise ProtocolError("a request has exactly one of 'statements' and 'procedure'")
    if req.statements is not None:
        if not allow_statements:
            raise ProtocolError(
                "this subject runs procedures only; send statements to <prefix>.write"
            )
        if not allow_sql:
            raise ForbiddenError(
                "raw SQL is switched off on this bus (procedures-only mode); "
                "call a registered procedure instead"
            )
        if not req.statements:
            raise ProtocolError("'statements' is empty")
        if len(req.statements) > max_statements:
            raise LimitError(
                f"{len(req.statements)} statements in one request; the limit is {max_statements}"
            )
        for i, stmt in enumerate(req.statements):
            if not stmt.sql.strip():
                raise ProtocolError(f"statement {i} has empty SQL")
            command = _first_command(stmt.sql)
            if _TRANSACTION_CONTROL.match(command):
                raise ProtocolError(
                    f"statement {i} controls the transaction ({command.split()[0]!r}); the bus "
                    "runs each request as one transaction of its own"
                )
            why = outlasts(command)
            if why is not None:
                raise ProtocolError(
                    f"statement {i} ({' '.join(command.split()[:2])!r}) is refused: {why}. "
                    "What would outlast the request on the worker's pooled connection reaches "
                    "later requests; SET LOCAL (or a temporary table ON COMMIT DROP) lasts "
                    "until the request's COMMIT"
                )
            if _COPY.match(command):
                raise ProtocolError(
                    f"statement {i} is a COPY, which the bus cannot run in a batch; insert the "
                    "rows with parameters (INSERT ... SELECT * FROM unnest(%s, ...)), or copy "
                    "them in a procedure"
                )
            if stmt.params is not None and len(stmt.params) > MAX_PARAMS_PER_STATEMENT:
                raise LimitError(
                    f"statement {i} has {len(stmt.params)} parameters; "
                    f"the limit is {MAX_PARAMS_PER_STATEMENT}"
                )
    elif not req.procedure:
        raise ProtocolError("'procedure' is empty")
    size = param_bytes(req)
    if size > max_param_bytes:
        raise LimitError(f"parameters take {size} bytes; the limit is {max_param_bytes}")
    params = [s.params for s in req.statements or ()]  # within the size limit: a bounded scan
    if _too_deep([params, req.args, req.kwargs], MAX_PARAM_DEPTH + 3):  # 3: the request's own
        raise LimitError(f"parameters nest deeper than {MAX_PARAM_DEPTH} levels")
    for i, stmt in enumerate(req.statements or ()):
        why = _types_problem(stmt)
        if why is not None:
            raise ProtocolError(f"statement {i}'s types do not fit its parameters: {why}")


def _types_problem(stmt: Statement) -> str | None:
    """What is wrong with ``stmt.types`` (None: nothing): its shape must be that of
    ``params``, each OID 0..2**32-1, and each typed value nil, a string, a number, a boolean
    or an array of them, which a worker sends as text of the type."""
    types, params = stmt.types, stmt.params
    if types is None:
        return None
    if isinstance(types, list):
        if not isinstance(params, list) or len(types) != len(params):
            return "a list of types goes with a list of as many parameters"
        pairs = list(zip(types, params, strict=True))
    else:
        if not isinstance(params, dict) or not types.keys() <= params.keys():
            return "a map of types names some of a map of parameters"
        pairs = [(oid, params[name]) for name, oid in types.items()]
    for oid, value in pairs:
        if not 0 <= oid < 2**32:
            return f"{oid} is not a type OID"
        if oid and not _textual(value):
            return f"a typed {type(value).__name__} cannot be sent as text"
    return None


def _textual(value: object) -> bool:
    if isinstance(value, list):
        return all(_textual(v) for v in value)
    return value is None or isinstance(value, (str, int, float))


def keeps_to_itself(req: Request) -> bool:
    """Whether ``req`` changes what later statements of its transaction see -- ``SET LOCAL``,
    ``SET CONSTRAINTS``, ``set_config(..., true)``, a temporary table -- so that it must not
    share its transaction with other requests (group commit): it runs in one of its own."""
    for stmt in req.statements or ():
        command = _first_command(stmt.sql)
        if _SET.match(command) or _TEMP.match(command) or _sets_config(command):
            return True
    return False
