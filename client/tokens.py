"""Session tokens: read-your-writes across requests, processes and regions.

A write's result carries a **token**: the commit's LSN in a short, URL- and cookie-safe string
(``"1.305aaa0"``: format version 1, then the LSN in hex). Whoever holds it -- the next request
of the same user, on another instance, in another region -- passes it to a read
(``fetch(..., after=token)``), which first waits until the local replica has replayed that LSN.
This is LiteFS's ``__txid`` cookie and Aurora's SESSION consistency.

A *session* is the highest token seen in one context: the middleware
(:mod:`writebus.client.middleware`) opens one per HTTP request from the client's cookie or
``Writebus-Lsn`` header; every write in it raises it; every read in it waits for it; the
response carries the newest token back.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import threading
from collections.abc import Iterator
from typing import Final, Protocol

from writebus.client.errors import ProtocolError

TOKEN_VERSION: Final = 1
_TOKEN = re.compile(r"^1\.([0-9a-fA-F]{1,16})$")  # Postgres prints LSNs in upper case
#: The cookie and header the middleware reads and sets.
COOKIE: Final = "writebus_lsn"
HEADER: Final = "Writebus-Lsn"


def make_token(lsn: int) -> str:
    """The token of a commit at ``lsn``."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{TOKEN_VERSION}.{lsn:x}"


def token_lsn(token: str) -> int:
    """The LSN a token holds; :class:`ProtocolError` when it is not a writebus token."""
    match = _TOKEN.match(token.strip()) if isinstance(token, str) else None
    if match is None:
        raise ProtocolError(f"not a writebus session token: {token!r}")
    return int(match.group(1), 16)


def newest(*tokens: str | None) -> str | None:
    """The token with the highest LSN among ``tokens`` (malformed ones are ignored)."""
    best: tuple[int, str] | None = None
    for token in tokens:
        if not token:
            continue
        try:
            lsn = token_lsn(token)
        except ProtocolError:
            continue
        if best is None or lsn > best[0]:
            best = (lsn, token)
    return best[1] if best else None


class Switches(Protocol):
    """Where a session learns of a failover: the Database that recorded its position."""

    @property
    def forks(self) -> dict[int, int]:
        """Each promotion of the region's database: new timeline -> where the history forked."""


class Session:
    """The highest LSN seen in one context (a request, a job).

    It keeps the highest position per timeline (a write's reply names it), and the Databases
    that recorded them: once one says its region's database was promoted, what older timelines
    committed past the fork no longer counts (:meth:`forget`). Safe to share between threads
    (the sync API's caller and its loop thread)."""

    def __init__(self, lsn: int | None = None) -> None:
        self._lock = threading.Lock()
        #: The highest position seen on each timeline (None: unknown -- a token's).
        self._tops: dict[int | None, int] = {}
        self._lsn: int | None = None
        self._sources: tuple[Switches, ...] = ()
        self.lsn = lsn

    def __repr__(self) -> str:
        return f"Session(lsn={self._lsn})"

    @property
    def lsn(self) -> int | None:
        """The highest position that counts: what the session's reads wait for."""
        for source in self._sources:
            for timeline, fork in source.forks.items():
                self.forget(fork, timeline)
        return self._lsn

    @lsn.setter
    def lsn(self, lsn: int | None) -> None:
        # Set by hand, it is a position whose timeline is unknown, as a token's.
        with self._lock:
            self._tops = {} if lsn is None else {None: lsn}
            self._lsn = lsn

    @property
    def token(self) -> str | None:
        """The session's token, or None before any write or incoming token."""
        lsn = self.lsn
        return make_token(lsn) if lsn is not None else None

    def saw(
        self, lsn: int | None, timeline: int | None = None, source: Switches | None = None
    ) -> None:
        """Raise the session to ``lsn`` (a commit on ``timeline``, if known) if it is newer;
        ``source`` (the Database that recorded it) tells it of a failover that loses it."""
        if lsn is None:
            return
        with self._lock:
            top = self._tops.get(timeline)
            if top is None or lsn > top:
                self._tops[timeline] = lsn
            if self._lsn is None or lsn > self._lsn:
                self._lsn = lsn
            if source is not None and source not in self._sources:
                self._sources += (source,)

    def cap(self, limit: int) -> None:
        """The primary had not reached the session's token position (timeline unknown): it
        goes back to ``limit``, the primary's, so that reads stop waiting for it and the
        token handed on is renewed."""
        with self._lock:
            top = self._tops.get(None)
            if top is not None and top > limit:
                self._tops[None] = limit
                self._lsn = max(self._tops.values())

    def forget(self, switch: int, timeline: int) -> None:
        """A failover forked the history at ``switch`` onto ``timeline``: what older timelines
        committed past that point is lost. The session's positions there go back to
        ``switch``, so that its reads do not wait for a position the new primary may never
        reach; those of ``timeline`` and of tokens (timeline unknown) stay."""
        with self._lock:
            lost = [seen for seen, top in self._tops.items()
                    if seen is not None and seen < timeline and top > switch]  # fmt: skip
            if lost:
                for seen in lost:
                    self._tops[seen] = switch
                self._lsn = max(self._tops.values())


_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "writebus_session", default=None
)


def current_session() -> Session | None:
    """The session of the current context, if one is open."""
    return _current.get()


@contextlib.contextmanager
def session(token: str | None = None) -> Iterator[Session]:
    """Open a session for the enclosed code, starting from ``token`` (malformed: ignored)::

        with writebus.session(request.cookies.get("writebus_lsn")) as s:
            ...                      # reads wait for s, writes raise it
        response.set_cookie("writebus_lsn", s.token)
    """
    start = newest(token)
    state = Session(token_lsn(start) if start else None)
    reset = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(reset)
