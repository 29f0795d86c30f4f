"""Which token a request carries (:func:`writebus.client.middleware.incoming_token`); the
middleware itself runs on real servers in tests/test_consistency.py."""

from __future__ import annotations

from writebus.client.middleware import cookie_values, incoming_token
from writebus.client.tokens import Session, token_lsn


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


def test_a_session_forgets_only_the_lost_position_it_stands_at() -> None:
    """A failover lost the commit at 200 (the new timeline forked at 150): a session standing
    at 200 goes back to 150; one past it, or below it, keeps its position."""
    at = Session(200)
    at.forget(200, 150)
    assert at.lsn == 150
    past = Session(300)
    past.forget(200, 150)
    assert past.lsn == 300
    below = Session(100)
    below.forget(100, 150)  # not a loss: the new timeline holds 100
    assert below.lsn == 100
