"""What each served request was, for the request log, metrics and the status message.

The handler builds one :class:`Served` per request and hands it to its observers; none of them
sees SQL parameters or procedure arguments, so none can log or publish them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from writebus.client.log import get_logger


@dataclass(frozen=True, slots=True, kw_only=True)
class Served:
    """One answered request. Times are milliseconds."""

    request_id: str
    subject: str
    #: The procedure's name, or None for statements.
    procedure: str | None
    #: How many statements (0 for a procedure).
    statements: int
    #: ``"ok"``, or the error kind of the reply (``rejected``, ``limit``...).
    outcome: str
    sqlstate: str | None
    duplicate: bool
    #: Time between the message reaching the worker and its handling starting.
    queue_ms: float
    #: Time running it: transaction through flush LSN.
    run_ms: float
    lsn: str | None
    origin: str | None

    @property
    def total_ms(self) -> float:
        """Time on the worker, waiting included."""
        return self.queue_ms + self.run_ms


Observer = Callable[[Served], None]


class RequestLog:
    """Logs one line per served request (event ``request``) at a configurable level, on the
    ``writebus.bus.requests`` logger. Never SQL, parameters or credentials."""

    def __init__(self, level: int = logging.INFO) -> None:
        self.level = level
        self._std = logging.getLogger("writebus.bus.requests")
        self._log = get_logger("writebus.bus.requests")

    def __call__(self, served: Served) -> None:
        if not self._std.isEnabledFor(self.level):
            return
        self._log.log(
            self.level,
            "request",
            request_id=served.request_id,
            subject=served.subject,
            procedure=served.procedure,
            statements=served.statements,
            outcome=served.outcome,
            sqlstate=served.sqlstate,
            duplicate=served.duplicate,
            queue_ms=round(served.queue_ms, 3),
            run_ms=round(served.run_ms, 3),
            lsn=served.lsn,
            origin=served.origin,
        )
