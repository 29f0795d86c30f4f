"""The dashboard's pure parts and its command line: listen addresses, the URL it prints, the
event encoding, and a mistyped ``--listen`` reported as a usage error."""

from __future__ import annotations

import argparse
import json

import pytest

from writebus.bus.cli import main
from writebus.bus.dashboard import page_url, parse_listen, render_page, sse_event


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_listen_accepts_host_port(text: str, addr: tuple[str, int]) -> None:
    """host:port, :port (loopback) and [v6]:port parse; port 0 stays 0 (a free port)."""
    assert parse_listen(text) == addr


@pytest.mark.parametrize("text", ["8080", "host:", "host:http", "h:65536", "h:-1", ""])
def test_parse_listen_refuses_anything_else(text: str) -> None:
    """A missing, non-numeric or out-of-range port is an argparse type error with an example."""
    with pytest.raises(argparse.ArgumentTypeError, match="host:port"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:81/"),
        ("0.0.0.0", "http://127.0.0.1:81/"),
        ("::", "http://[::1]:81/"),
        ("::1", "http://[::1]:81/"),
        ("dash.internal", "http://dash.internal:81/"),
    ],
)
def test_page_url_is_openable_from_this_machine(host: str, url: str) -> None:
    """The printed URL names a wildcard listener by its loopback address and brackets IPv6."""
    assert page_url(host, 81) == url


def test_an_event_is_one_data_line_even_with_newlines_and_nan() -> None:
    """A value holding a newline cannot split the event, and a NaN (which msgpack can carry
    but JSON cannot) is sent as null instead of breaking the browser's JSON.parse."""
    data = {"rows": [{"replica_id": "a\n\ndata: forged", "lag_seconds": float("nan")}]}
    event = sse_event(data)
    assert event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert event.startswith(b"data: ")
    decoded = json.loads(event[len(b"data: "):])
    assert decoded == {"rows": [{"replica_id": "a\n\ndata: forged", "lag_seconds": None}]}


def test_the_prefix_is_escaped_into_the_page() -> None:
    """A prefix is inserted HTML-escaped, and every placeholder is filled."""
    page = render_page(prefix="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page and "{{" not in page


def test_a_malformed_listen_address_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``writebus dashboard --listen nonsense`` exits 2 with one line on stderr naming the
    option, before connecting to anything."""
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", "--listen", "nonsense"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("writebus dashboard: --listen 'nonsense'") and err.count("\n") == 1
