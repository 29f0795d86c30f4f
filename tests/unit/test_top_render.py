"""What `writebus top` draws, from hand-made snapshots (pure rendering, no server)."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from writebus.bus.topview import (
    fmt_bytes,
    fmt_count,
    fmt_ms,
    fmt_rate,
    fmt_seconds,
    node_name,
    render,
)
from writebus.bus.watch import Row, Snapshot
from writebus.client.lsn import MAX_LSN, format_lsn

RED, YELLOW = "\x1b[31m", "\x1b[33m"  # the standard palette's codes for rich's "red", "yellow"


def row(region: str, replica_id: str, role: str = "replica", **changes: Any) -> Row:
    """A healthy, busy node; ``changes`` override any field."""
    base = Row(
        region=region,
        replica_id=replica_id,
        role=role,
        lsn="0/3A2B1C8",
        lag_bytes=0,
        lag_seconds=0.0,
        broadcast_age=0.4,
        requests_per_s=12.0,
        p50_ms=1.2,
        p99_ms=4.5,
        errors_per_s=0.0,
        in_flight=2,
        concurrency=64,
        version="0.1.0",
        stale=False,
        lagging=False,
    )
    return replace(base, **changes)


def snapshot(*rows: Row, writes: float = 12.0, primary_lsn: str | None = "0/3A2B1C8") -> Snapshot:
    """A snapshot of ``rows`` taken now."""
    return Snapshot(time=1_700_000_000.0, rows=list(rows), writes_per_s=writes, primary_lsn=primary_lsn)


def text(snap: Snapshot, *, width: int = 80, colour: bool = False) -> str:
    """The view as a terminal of ``width`` columns shows it (ANSI codes when ``colour``)."""
    console = Console(
        record=True,
        width=width,
        force_terminal=colour,
        color_system="standard" if colour else None,
        file=io.StringIO(),  # recorded, not shown
    )
    console.print(render(snap, prefix="writebus", stale_after=3.5))
    return console.export_text(styles=colour)


def line_of(output: str, needle: str) -> str:
    """The one line containing ``needle``."""
    found = [line for line in output.splitlines() if needle in line]
    assert len(found) == 1, (needle, output)
    return found[0]


MIXED = snapshot(
    row("syd", "syd-e784079b449d18", "primary", lsn="1A3/FFFFFFF0", requests_per_s=1234.0),
    row("lax", "lax-3d8e1f2a", lsn="1A3/FFFF0000", lag_bytes=40_000_000, lag_seconds=12.5,
        lagging=True),
    row("fra", "fra-91c2", lsn="1A2/0", lag_bytes=None, lag_seconds=None, broadcast_age=9.2,
        requests_per_s=None, p50_ms=None, p99_ms=None, errors_per_s=None, in_flight=None,
        stale=True),
    primary_lsn="1A3/FFFFFFF0",
    writes=1234.0,
)


def test_the_view_fits_80_columns_with_every_figure_whole() -> None:
    """At 80 columns no line is longer, and the LSNs, lag, rates and markers appear in full on
    their node's line (only a long replica id may be shortened)."""
    out = text(MIXED)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    primary = line_of(out, "primary 1A3/FFFFFFF0")
    assert re.search(r"primary 1A3/FFFFFFF0 +0 +0\.0s +0\.4s +1\.2k +1\.2 +4\.5 +0 +2", primary), out
    lagging = line_of(out, "1A3/FFFF0000")
    assert re.search(r"replica 1A3/FFFF0000 +38M +12s +0\.4s +12 +1\.2 +4\.5 +0 +2 LAG", lagging)
    assert "1A3/FFFFFFF0" in out.splitlines()[0]  # the primary's LSN in the header
    assert "writes 1.2k/s" in out.splitlines()[0]


def test_stale_and_lagging_rows_are_red_and_yellow_and_say_so_in_words() -> None:
    """A stale node's line is red and ends in STALE; a lagging one's is yellow and ends in LAG;
    a healthy one has neither colour nor marker. Without colour the words remain."""
    coloured = text(MIXED, colour=True)
    stale = line_of(coloured, "1A2/0")
    lagging = line_of(coloured, "1A3/FFFF0000")
    healthy = line_of(coloured, "1A3/FFFFFFF0 ")
    assert RED in stale and "STALE" in stale and YELLOW not in stale
    assert YELLOW in lagging and "LAG" in lagging and RED not in lagging
    assert RED not in healthy and YELLOW not in healthy
    assert "STALE" not in healthy and "LAG" not in healthy
    plain = text(MIXED)
    assert "\x1b[" not in plain
    assert line_of(plain, "1A2/0").rstrip().endswith("STALE")
    assert line_of(plain, "1A3/FFFF0000").rstrip().endswith("LAG")
    assert "1 stale" in plain.splitlines()[0] and "1 lagging" in plain.splitlines()[0]


def test_a_stale_node_that_also_lags_is_marked_stale() -> None:
    """Stale wins over lagging: its lag figures are as old as its last broadcast."""
    out = text(snapshot(row("lax", "replica-1", stale=True, lagging=True, lag_seconds=30.0)))
    assert line_of(out, "replica-1").rstrip().endswith("STALE")
    assert "lagging" not in out.splitlines()[0]


def test_missing_figures_show_as_a_dash() -> None:
    """A node heard only through its progress broadcast (no status message): every traffic
    figure is "-", and a note says which subject was not heard."""
    out = text(snapshot(row("lax", "lax-1", lsn="0/10", requests_per_s=None, p50_ms=None,
                            p99_ms=None, errors_per_s=None, in_flight=None, concurrency=None)))
    line = line_of(out, "0/10")
    assert line.split()[-5:] == ["-"] * 5, line
    assert "no status heard on writebus.status.>" in out


def test_unknown_lsn_and_lag_show_as_a_dash() -> None:
    """A node known only from its status message, before any broadcast: LSN, lag and the age of
    the last broadcast are "-", and so is the primary's LSN in the header."""
    out = text(snapshot(row("lax", "lax-1", lsn=None, lag_bytes=None, lag_seconds=None,
                            broadcast_age=None), primary_lsn=None))
    assert re.search(r"replica +- +- +- +- +12", out), out
    assert "primary LSN -" in out.splitlines()[0]


def test_nodes_are_grouped_under_their_region_primary_first() -> None:
    """Each region is a line of its own, the primary's first, then the others by name; nodes
    follow their region without the region prefix of their id."""
    out = text(snapshot(
        row("lax", "lax-b"), row("fra", "fra-a"), row("syd", "syd-p", "primary"), row("lax", "lax-a"),
    ))
    names = [line.split()[0] for line in out.splitlines()[3:-1]]
    assert names == ["syd", "p", "fra", "a", "lax", "a", "b"], out


def test_nothing_heard_yet_says_what_it_waits_for() -> None:
    """An empty snapshot names the subjects it listens to instead of an empty table."""
    out = text(snapshot(primary_lsn=None, writes=0.0))
    assert "waiting for bus nodes on writebus.lsn.> and writebus.status.>" in out
    assert "writes 0/s" in out.splitlines()[0]


def test_node_name_drops_only_a_region_prefix() -> None:
    """The bus's default id ``<region>-<host>`` shows as ``<host>``; other ids are unchanged."""
    assert node_name(row("lax", "lax-e784")) == "e784"
    assert node_name(row("lax", "lax-")) == "lax-"
    assert node_name(row("lax", "laxative")) == "laxative"
    assert node_name(row("lax", "replica-2")) == "replica-2"


def test_figures_are_compact() -> None:
    """Bytes, seconds, rates and milliseconds take at most 5, 4, 4 and 4 characters."""
    assert [fmt_bytes(n) for n in (None, 0, 512, 1536, 40_000_000, 1023 * 1024 + 1000)] == [
        "-", "0", "512B", "1.5K", "38M", "1.0M",
    ]
    assert [fmt_seconds(s) for s in (None, 0.04, 9.96, 59.4, 125.0, 7200.0, 3e6, 1e12)] == [
        "-", "0.0s", "10s", "59s", "2m", "2h", "35d", ">99d",
    ]
    assert [fmt_rate(r) for r in (None, 0.0, 0.5, 12.4, 999.4, 1234.0, 45_000.0, 2e6, 1e15)] == [
        "-", "0", "0.5", "12", "999", "1.2k", "45k", "2.0M", ">1T",
    ]
    assert [fmt_ms(ms) for ms in (None, 0.8, 12.3, 345.0, 1234.0)] == ["-", "0.8", "12", "345", "1.2s"]
    assert [fmt_rate(x) for x in (float("nan"), float("inf"))] == ["?", "?"]
    assert fmt_count(12) == "12" and fmt_count(123_456) == "123k"


figures = st.floats()  # NaN and infinities too: anyone allowed to publish status can send them


@settings(max_examples=60, deadline=None)
@given(
    lsns=st.lists(st.integers(0, MAX_LSN), min_size=1, max_size=6),
    ids=st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40),
    lag=st.integers(0, 2**63),
    seconds=figures,
    rate=figures,
    ms=figures,
    in_flight=st.integers(0, 2**63),
)
def test_any_figures_fit_80_columns(
    lsns: list[int], ids: str, lag: int, seconds: float, rate: float, ms: float, in_flight: int
) -> None:
    """Whatever the figures, every line fits 80 columns and each node's LSN is shown whole."""
    rows = [
        row("region", f"{ids}{i}", "primary" if i == 0 else "replica", lsn=format_lsn(lsn),
            lag_bytes=lag, lag_seconds=seconds, broadcast_age=seconds, requests_per_s=rate,
            p50_ms=ms, p99_ms=ms, errors_per_s=rate, in_flight=in_flight, lagging=True)
        for i, lsn in enumerate(lsns)
    ]
    out = text(snapshot(*rows, primary_lsn=format_lsn(max(lsns)), writes=rate))
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for r in rows:
        assert re.search(rf"(primary|replica) {re.escape(r.lsn or '')} ", out), out
        assert fmt_bytes(lag) in out and fmt_rate(rate) in out and fmt_ms(ms) in out
        assert fmt_seconds(seconds) in out and fmt_count(in_flight) in out


def test_values_from_nats_messages_are_shown_as_text_not_markup() -> None:
    """A replica id or role that looks like rich markup (any client may publish on the
    status subjects) is shown as written: it neither ends the view (MarkupError) nor
    restyles it."""
    odd = row("lax", "lax-x[/oops]", role="[bold red]replica[/]", lsn="[/]")
    shown = text(snapshot(odd), width=160)
    assert "x[/oops]" in shown and "[bold red]replica[/]" in shown and "[/]" in shown
