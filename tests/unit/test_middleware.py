"""Which token a request carries (:func:`writebus.client.middleware.incoming_token`), and
how the WSGI body is handed on; the middleware runs on real servers in
tests/test_consistency.py."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from writebus.client.middleware import (
    WritebusWSGIMiddleware,
    cookie_values,
    incoming_token,
    outgoing_headers,
)
from writebus.client.tokens import (
    COOKIE,
    HEADER,
    Session,
    current_session,
    make_token,
    token_lsn,
)


def test_a_neighbour_cookie_the_standard_parser_rejects_does_not_hide_the_token() -> None:
    """JSON values, spaces and odd names in other cookies are common; the token survives."""
    for header in (
        'theme={"a": 1}; writebus_lsn=1.abc',
        "sess=a b; writebus_lsn=1.abc",
        "weird@name=1; writebus_lsn=1.abc",
        'writebus_lsn="1.abc"',
        "  writebus_lsn = 1.abc ;",
    ):
        assert incoming_token(None, header) == "1.abc", header


def test_the_newest_of_header_and_cookies_wins() -> None:
    """A blank or malformed header no longer hides the cookie; of several tokens (a header
    sent twice, cookies of two paths) the newest is taken: waiting for it is never stale."""
    assert incoming_token("  ", "writebus_lsn=1.abc") == "1.abc"
    assert incoming_token("nonsense", "writebus_lsn=1.abc") == "1.abc"
    assert incoming_token("1.ff", "writebus_lsn=1.abc") == "1.abc"
    assert incoming_token("1.abcd", "writebus_lsn=1.abc") == "1.abcd"
    assert incoming_token("1.a,1.c", None) == "1.c"
    assert incoming_token(None, "writebus_lsn=1.b; x=1; writebus_lsn=1.a") == "1.b"
    assert incoming_token(None, "other_lsn=1.abc") is None
    assert incoming_token(None, None) is None
    assert incoming_token(None, "x=1", cookie="x") is None  # not a token


def test_cookie_values_reads_only_the_named_cookie() -> None:
    """Names match exactly; a part without '=' is skipped."""
    assert cookie_values("a=1; ab=2; a=3; flag", "a") == ["1", "3"]
    assert cookie_values(None, "a") == []


def test_a_token_in_upper_case_hex_is_read() -> None:
    """Postgres prints LSNs in upper case: a peer in another language may too."""
    assert token_lsn("1.3000A38") == token_lsn("1.3000a38") == 0x3000A38


def test_a_session_forgets_what_a_failover_lost_and_keeps_the_rest() -> None:
    """The new primary's timeline 2 forked at 150. The session's timeline-1 positions past it
    go back to 150; a later commit on timeline 2 (at 160, below the lost 200) and a token's
    position (timeline unknown) stay, and the session stands at the highest of those."""
    s = Session(120)  # from a token
    s.saw(140, 1)
    s.saw(200, 1)  # lost
    s.saw(160, 2)  # the new primary's, after the failover
    assert s.lsn == 200
    s.forget(150, 2)
    assert s.lsn == 160
    only_lost = Session()
    only_lost.saw(200, 1)
    only_lost.forget(150, 2)
    assert only_lost.lsn == 150 and only_lost.token == "1.96"
    kept = Session()
    kept.saw(140, 1)
    kept.forget(150, 2)  # not a loss: the new timeline holds 140
    assert kept.lsn == 140
    by_hand = Session()
    by_hand.saw(200, 1)
    by_hand.lsn = 180  # set by hand: a position of unknown timeline, as a token's
    by_hand.saw(170, 1)
    by_hand.forget(150, 2)
    assert by_hand.lsn == 180 and repr(by_hand) == "Session(lsn=180)"


def test_a_session_learns_of_the_failover_from_the_tracker_that_recorded_its_write() -> None:
    """A write recorded with its Database's tracker: once that tracker says the region was
    promoted, the session's position and token -- the middleware's outgoing cookie -- no
    longer hold what the dead timeline committed past the promotion."""
    tracker = SimpleNamespace(forks={})
    s = Session(100)  # the request's incoming token
    s.saw(200, 1, tracker)
    assert s.token == "1.c8"
    tracker.forks = {2: 150}
    assert s.lsn == 150 and s.token == "1.96"
    headers = dict(outgoing_headers(s, 100, cookie="writebus_lsn", max_age=60, secure=False))
    assert headers["Writebus-Lsn"] == "1.96"


def test_a_token_position_past_the_primarys_is_capped_and_the_cookie_renewed() -> None:
    """The primary had not reached the token's position: the session goes back to the
    primary's, and the response carries the renewed token. Positions of the session's own
    writes (a timeline known) are not the token's, and stay."""
    s = Session(10**12)
    start = s.lsn
    s.cap(5000)
    assert s.lsn == 5000 and s.token == make_token(5000)
    assert dict(outgoing_headers(s, start, cookie=COOKIE, max_age=60, secure=False))[HEADER] == (
        make_token(5000)
    )
    own = Session(None)
    own.saw(7000, 1)
    own.cap(5000)
    assert own.lsn == 7000


def test_a_wsgi_body_streams_in_the_session_without_being_held_whole() -> None:
    """The WSGI middleware hands the body on chunk by chunk (an endless stream used to hang,
    read whole into memory first), each chunk and ``close()`` made in the request's session."""
    seen: list[object] = []
    closed: list[object] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for _ in range(1000):  # endless, as far as this test goes
                seen.append(current_session())
                yield b"chunk"
        finally:
            closed.append(current_session())

    token = make_token(0x1234)
    wrapped = WritebusWSGIMiddleware(app)
    body = wrapped({"HTTP_WRITEBUS_LSN": token}, lambda *a: None)
    assert seen == []  # nothing made yet: the server asks for each chunk
    assert current_session() is None  # the call is over; the session lives on in the body
    chunks = iter(body)
    assert [next(chunks), next(chunks)] == [b"chunk", b"chunk"]
    body.close()  # type: ignore[attr-defined]
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0] is not None
    assert seen[0].lsn == 0x1234  # type: ignore[attr-defined]
    assert closed == [seen[0]]
