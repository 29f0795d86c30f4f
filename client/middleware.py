"""Read-your-writes across HTTP requests: ASGI and WSGI middleware for session tokens.

Each request runs in a :func:`writebus.session` started from the client's token -- the newest
of the ``Writebus-Lsn`` header and the ``writebus_lsn`` cookie. Reads in the request wait for it;
writes raise it; the response carries the newest token back (``Set-Cookie`` and the header),
so the next request -- on any instance, in any region -- sees this one's writes. A POST that
writes and redirects, then the GET it redirects to, is the case it exists for.

::

    app = WritebusASGIMiddleware(fastapi_app)      # Starlette, FastAPI, any ASGI app
    app.wsgi_app = WritebusWSGIMiddleware(app.wsgi_app)   # Flask, Django, any WSGI app
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from writebus.client.tokens import COOKIE, HEADER, Session, make_token, newest, session

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def cookie_values(cookie_header: str | None, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header. Parsed by hand, leniently: the
    standard library's parser drops the whole header over one neighbour it dislikes (a JSON
    value, a space, an ``@`` in a name), and with it the token."""
    values = []
    for part in (cookie_header or "").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def incoming_token(
    header: str | None, cookie_header: str | None, cookie: str = COOKIE
) -> str | None:
    """The newest token a request carries, in its ``Writebus-Lsn`` header or its cookie (None:
    neither). Malformed ones are ignored; waiting for the newest is never stale."""
    return newest(*(header or "").split(","), *cookie_values(cookie_header, cookie))


def outgoing_headers(
    state: Session, start_lsn: int | None, *, cookie: str, max_age: int, secure: bool
) -> list[tuple[str, str]]:
    """Headers to add to the response: the newest token, when the request made it newer."""
    lsn = state.lsn  # read once: another thread may learn of a failover meanwhile
    if lsn is None or lsn == start_lsn:
        return []
    token = make_token(lsn)
    attrs = f"{cookie}={token}; Path=/; Max-Age={max_age}; SameSite=Lax; HttpOnly"
    if secure:
        attrs += "; Secure"
    return [("Set-Cookie", attrs), (HEADER, token)]


def _joined(scope: MutableMapping[str, Any], name: str, sep: str) -> str | None:
    """Every ``name`` header of an ASGI request, joined: HTTP/2 clients send each cookie in a
    header of its own."""
    values = [v.decode("latin-1") for k, v in scope["headers"] if k.decode("latin-1").lower() == name]
    return sep.join(values) if values else None


class WritebusASGIMiddleware:
    """ASGI middleware: one session per HTTP request, its newest token on the response."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cookie: str = COOKIE,
        max_age: int = 3600,
        secure: bool = False,
    ) -> None:
        self.app = app
        self.cookie = cookie
        self.max_age = max_age
        self.secure = secure

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        token = incoming_token(
            _joined(scope, HEADER.lower(), ","), _joined(scope, "cookie", ";"), self.cookie
        )
        with session(token) as state:
            start = state.lsn

            async def send_with_token(message: Any) -> None:
                if message.get("type") == "http.response.start":
                    extra = outgoing_headers(
                        state, start, cookie=self.cookie, max_age=self.max_age, secure=self.secure
                    )
                    if extra:
                        message = dict(message)
                        message["headers"] = list(message.get("headers", [])) + [
                            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra
                        ]
                await send(message)

            await self.app(scope, receive, send_with_token)


class WritebusWSGIMiddleware:
    """WSGI middleware: one session per request, its newest token on the response."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        cookie: str = COOKIE,
        max_age: int = 3600,
        secure: bool = False,
    ) -> None:
        self.app = app
        self.cookie = cookie
        self.max_age = max_age
        self.secure = secure

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        token = incoming_token(
            environ.get("HTTP_WRITEBUS_LSN"), environ.get("HTTP_COOKIE"), self.cookie
        )
        with session(token) as state:
            start = state.lsn

            def start_with_token(
                status: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Any:
                extra = outgoing_headers(
                    state, start, cookie=self.cookie, max_age=self.max_age, secure=self.secure
                )
                return start_response(status, list(headers) + extra, exc_info)

            result = self.app(environ, start_with_token)
            # The body is produced in the session too, chunk by chunk as the server asks: a
            # streamed response's reads wait, and it is not held in memory whole first.
            return _InSession(result, contextvars.copy_context())


class _InSession:
    """A WSGI response iterable whose chunks, and ``close()``, run in ``context``."""

    def __init__(self, result: Iterable[bytes], context: contextvars.Context) -> None:
        self._result = result
        self._context = context
        self._chunks = context.run(iter, result)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self._context.run(next, self._chunks)

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            self._context.run(close)
