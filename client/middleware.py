"""Read-your-writes across HTTP requests: ASGI and WSGI middleware for session tokens.

Each request runs in a :func:`writebus.session` started from the client's token -- the
``Writebus-Lsn`` header, else the ``writebus_lsn`` cookie. Reads in the request wait for it;
writes raise it; the response carries the newest token back (``Set-Cookie`` and the header),
so the next request -- on any instance, in any region -- sees this one's writes. A POST that
writes and redirects, then the GET it redirects to, is the case it exists for.

::

    app = WritebusASGIMiddleware(fastapi_app)      # Starlette, FastAPI, any ASGI app
    app.wsgi_app = WritebusWSGIMiddleware(app.wsgi_app)   # Flask, Django, any WSGI app
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from writebus.client.tokens import COOKIE, HEADER, Session, session

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def incoming_token(
    header: str | None, cookie_header: str | None, cookie: str = COOKIE
) -> str | None:
    """The token a request carries: its header, else its cookie (None: neither)."""
    if header:
        return header.strip()
    if not cookie_header:
        return None
    try:
        jar: SimpleCookie = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(cookie)
    return morsel.value if morsel is not None else None


def outgoing_headers(
    state: Session, start_lsn: int | None, *, cookie: str, max_age: int, secure: bool
) -> list[tuple[str, str]]:
    """Headers to add to the response: the newest token, when the request made it newer."""
    token = state.token
    if token is None or state.lsn == start_lsn:
        return []
    attrs = f"{cookie}={token}; Path=/; Max-Age={max_age}; SameSite=Lax; HttpOnly"
    if secure:
        attrs += "; Secure"
    return [("Set-Cookie", attrs), (HEADER, token)]


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
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = incoming_token(headers.get(HEADER.lower()), headers.get("cookie"), self.cookie)
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

            # The body is produced inside the session too: a streamed response's reads wait.
            result = self.app(environ, start_with_token)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
