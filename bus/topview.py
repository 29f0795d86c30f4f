"""What ``writebus top`` draws: a :class:`~writebus.bus.watch.Snapshot` as a rich renderable.

Pure presentation: a snapshot in, a renderable out, no I/O and no clock (the time shown is the
snapshot's), so it is tested with hand-made snapshots.

Laid out for an 80-column terminal over SSH. Eleven figures per node do not fit beside a region
column and a replica column, so each region is a row of its own with its nodes under it, and a
node's id loses the ``<region>-`` prefix the bus gives it by default (``--json`` keeps the full
id). The figures are compact (``12K``, ``3.1s``, ``1.2k``) and never cut; only the replica id
gives way, with an ellipsis, when a line would pass the width. A stale or lagging node is red or
yellow and also says ``STALE`` or ``LAG`` in words, so the state shows without colour. ASCII
only, apart from rich's ellipsis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from itertools import groupby
from typing import TypeVar

from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from writebus.bus.watch import LAGGING_BYTES, LAGGING_SECONDS, Row, Snapshot

#: Shown for a figure nobody reported (no status message heard, no broadcast yet...).
MISSING = "-"
#: Shown for a figure that is not a number (NaN, infinity).
UNREADABLE = "?"
STALE = "STALE"
LAGGING = "LAG"
#: Row styles; the words above carry the same meaning without colour.
STYLES = {STALE: "red", LAGGING: "yellow"}

_T = TypeVar("_T", int, float)


# -- figures --------------------------------------------------------------------------------


def _or_dash(fmt: Callable[[_T], str]) -> Callable[[_T | None], str]:
    """``fmt`` for a figure that may be missing (shown as :data:`MISSING`), or not a number
    at all -- anyone allowed to publish status could send NaN (shown as :data:`UNREADABLE`)."""

    def wrapped(value: _T | None) -> str:
        if value is None:
            return MISSING
        if not math.isfinite(value):
            return UNREADABLE
        return fmt(value)

    wrapped.__doc__ = fmt.__doc__
    return wrapped


def _scaled(value: float, units: tuple[str, ...], overflow: str) -> str:
    """``value`` in at most 4 characters: one decimal under 10, whole under 1000, else in the
    next of ``units`` (each 1000 times the last); past the last one, ``overflow``."""
    for unit in units:
        if round(value, 1) < 10:
            return f"{value:.1f}{unit}"
        if round(value) < 1000:
            return f"{value:.0f}{unit}"
        value /= 1000
    return overflow


@_or_dash
def fmt_bytes(n: int) -> str:
    """A byte count in at most 5 characters: ``0``, ``512B``, ``1.5K``, ``12M``, ``3.0G``."""
    if n <= 0:
        return "0"
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in "KMGTPE":
        value /= 1024
        if round(value, 1) < 1024 or unit == "E":
            break
    return f"{value:.1f}{unit}" if round(value, 1) < 10 else f"{value:.0f}{unit}"


@_or_dash
def fmt_seconds(s: float) -> str:
    """A duration in at most 4 characters: ``0.4s``, ``12s``, ``5m``, ``3h``, ``2d``, ``>99d``."""
    s = max(0.0, s)
    if round(s, 1) < 10:
        return f"{s:.1f}s"
    for limit, unit, size in ((60, "s", 1), (60, "m", 60), (24, "h", 3600), (100, "d", 86400)):
        if round(s / size) < limit:
            return f"{s / size:.0f}{unit}"
    return ">99d"


@_or_dash
def fmt_rate(r: float) -> str:
    """A count per second in at most 4 characters: ``0``, ``0.5``, ``12``, ``1.2k``, ``45k``."""
    r = max(0.0, r)
    return "0" if r == 0 else _scaled(r, ("", "k", "M", "G"), ">1T")


@_or_dash
def fmt_ms(ms: float) -> str:
    """Milliseconds in at most 4 characters: ``0.8``, ``12``, ``345``, then ``1.2s``, ``5m``."""
    ms = max(0.0, ms)
    return _scaled(ms, ("",), "") if round(ms) < 1000 else fmt_seconds(ms / 1000)


@_or_dash
def fmt_count(n: int) -> str:
    """A whole number, in at most 4 characters from 10000 on (``12k``)."""
    return str(n) if n < 10000 else fmt_rate(n)


# -- rows -----------------------------------------------------------------------------------


def state_of(row: Row) -> str:
    """``STALE`` (nothing heard lately: its other figures are old), ``LAG``, or ``""``."""
    if row.stale:
        return STALE
    if row.lagging:
        return LAGGING
    return ""


def node_name(row: Row) -> str:
    """The replica id shown under its region: without a ``<region>-`` prefix, which the
    region row above already says."""
    prefix = f"{row.region}-"
    rid = row.replica_id
    return rid[len(prefix) :] if rid.startswith(prefix) and len(rid) > len(prefix) else rid


def cells(row: Row) -> list[str]:
    """The figures of one node, in column order after its name."""
    return [
        row.role,
        row.lsn or MISSING,
        fmt_bytes(row.lag_bytes),
        fmt_seconds(row.lag_seconds),
        fmt_seconds(row.broadcast_age),
        fmt_rate(row.requests_per_s),
        fmt_ms(row.p50_ms),
        fmt_ms(row.p99_ms),
        fmt_rate(row.errors_per_s),
        fmt_count(row.in_flight),
        state_of(row),
    ]


#: (header, justification) after the node column; two-line headers keep columns narrow.
COLUMNS: list[tuple[str, JustifyMethod]] = [
    ("role", "left"),
    ("replay\nLSN", "left"),
    ("lag\nbytes", "right"),
    ("lag\nsecs", "right"),
    ("heard\nago", "right"),
    ("req/s", "right"),
    ("p50\nms", "right"),
    ("p99\nms", "right"),
    ("err/s", "right"),
    ("in\nflight", "right"),
    ("", "left"),  # STALE / LAG
]


def ordered(rows: list[Row]) -> list[Row]:
    """Regions with a primary first, then the others by name; in each, the primary first."""
    primaries = {r.region for r in rows if r.role == "primary"}
    return sorted(
        rows, key=lambda r: (r.region not in primaries, r.region, r.role != "primary", r.replica_id)
    )


def table(snapshot: Snapshot) -> Table:
    """One row per region, its nodes under it, in :func:`ordered` order."""
    t = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, expand=False)
    # The only column that may give way: ids are long, figures must stay whole.
    t.add_column("region\n node", no_wrap=False, overflow="ellipsis", min_width=6)
    for header, justify in COLUMNS:
        t.add_column(header, justify=justify, no_wrap=True)
    blank = [""] * len(COLUMNS)
    for region, rows in groupby(ordered(snapshot.rows), key=lambda r: r.region):
        t.add_row(Text(region, style="bold"), *blank)
        for row in rows:
            state = state_of(row)
            # As text, not markup: ids, roles and positions come from NATS messages, which any
            # client may publish ("lax-[/]" must not end the view, nor "[red]" restyle it).
            values = [" " + node_name(row), *cells(row)]
            t.add_row(*(Text(v) for v in values), style=STYLES.get(state))
    return t


def header(snapshot: Snapshot, *, prefix: str) -> Text:
    """Deployment-wide figures: the time, write throughput, the primary's LSN, how many nodes
    are stale or lagging."""
    stale = sum(1 for r in snapshot.rows if r.stale)
    lagging = sum(1 for r in snapshot.rows if r.lagging and not r.stale)
    when = time.strftime("%H:%M:%S", time.localtime(snapshot.time))
    text = Text()
    text.append(prefix, style="bold")
    text.append(f"  {when}  writes {fmt_rate(snapshot.writes_per_s)}/s")
    text.append(f"  primary LSN {snapshot.primary_lsn or MISSING}")
    if stale:
        text.append(f"  {stale} {STALE.lower()}", style=STYLES[STALE])
    if lagging:
        text.append(f"  {lagging} lagging", style=STYLES[LAGGING])
    return text


def legend(snapshot: Snapshot, *, prefix: str, stale_after: float) -> Text:
    """What the markers mean, and why the traffic columns are empty when they all are."""
    text = Text(
        f"{STALE}: nothing heard for {stale_after:g}s  "
        f"{LAGGING}: over {LAGGING_SECONDS:g}s or {LAGGING_BYTES // (1024 * 1024)} MiB behind",
        style="dim",
    )
    if snapshot.rows and all(r.in_flight is None for r in snapshot.rows):
        # Status and progress are separate subjects; a NATS user may be allowed only one.
        text.append(f"\nno status heard on {prefix}.status.>: traffic figures show {MISSING}")
    return text


def render(snapshot: Snapshot, *, prefix: str = "writebus", stale_after: float = 3.5) -> Group:
    """The whole view: header line, table, legend."""
    parts: list[RenderableType] = [header(snapshot, prefix=prefix)]
    if snapshot.rows:
        parts.append(table(snapshot))
    else:
        parts.append(Text(f"waiting for bus nodes on {prefix}.lsn.> and {prefix}.status.> ..."))
    parts.append(legend(snapshot, prefix=prefix, stale_after=stale_after))
    return Group(*parts)
