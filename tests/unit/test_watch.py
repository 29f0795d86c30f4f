"""Unit tests for ``bus/watch.py``: how ``top`` and the dashboard join progress broadcasts
and status messages. ``tests/test_top.py`` runs them against a live deployment."""

from __future__ import annotations

import json
import time
from typing import Any

from writebus.bus.watch import Watch, build_rows
from writebus.client.cluster import NodeRow
from writebus.client.protocol import Status, lsn_update


def _status(role: str, **changes: Any) -> Status:
    fields: dict[str, Any] = dict(
        region="syd", replica_id="a", role=role, version="1", time=0.0, uptime=1.0,
        interval=1.0, served=0, served_interval=0, errors={}, errors_interval={}, p50_ms=None,
        p99_ms=None, in_flight=0, concurrency=32, pool_size=1, pool_available=1, pool_max=2,
        pool_waiting=0, lsn=None, lsn_int=None, lag_bytes=None, lag_seconds=None,
    )  # fmt: skip
    fields.update(changes)
    return Status(**fields)


def _node(role: str, age: float) -> NodeRow:
    return NodeRow(region="syd", replica_id="a", role=role, lsn=100, lag_bytes=0,
                   lag_seconds=0.0, age=age, stale=age > 3.5, version="1")  # fmt: skip


def test_a_fresh_status_outranks_a_stale_broadcast() -> None:
    """A fenced old primary stops broadcasting but goes on sending its status: its row says
    ``fenced`` with the status's lag, not the last broadcast's ``primary`` and lag 0."""
    statuses = {("syd", "a"): (_status("fenced", lag_bytes=None), 99.5)}
    (row,) = build_rows([_node("primary", age=60.0)], statuses, 100.0, stale_after=3.5)
    assert (row.role, row.lag_bytes, row.stale) == ("fenced", None, False)


def test_a_fresh_broadcast_outranks_a_status() -> None:
    """While a node broadcasts, its broadcast says its role and lag."""
    statuses = {("syd", "a"): (_status("starting"), 99.5)}
    (row,) = build_rows([_node("primary", age=0.5)], statuses, 100.0, stale_after=3.5)
    assert (row.role, row.lag_bytes, row.stale) == ("primary", 0, False)


def test_a_node_silent_on_both_is_stale_with_what_it_last_said() -> None:
    """No fresh broadcast and no fresh status: the last broadcast's figures, marked stale."""
    statuses = {("syd", "a"): (_status("replica"), 50.0)}
    (row,) = build_rows([_node("primary", age=60.0)], statuses, 100.0, stale_after=3.5)
    assert (row.role, row.stale) == ("primary", True)


def test_statuses_are_forgotten_with_their_nodes() -> None:
    """A status not heard for the cluster view's ``forget_after`` leaves the picture: after
    each redeploy (new replica ids) the old nodes stayed as stale rows for good."""
    watch = Watch(nc=None)  # type: ignore[arg-type]  # snapshot() does no I/O
    now = time.monotonic()
    watch.statuses[("fra", "gone")] = (_status("replica", region="fra"), now - 301)
    watch.statuses[("syd", "a")] = (_status("primary"), now)
    assert [r.region for r in watch.snapshot().rows] == ["syd"]
    assert list(watch.statuses) == [("syd", "a")]


def test_the_primary_lsn_is_a_fresh_primarys() -> None:
    """The header's primary LSN is unknown once the primary went quiet: it showed the dead
    primary's last position for five minutes."""
    watch = Watch(nc=None)  # type: ignore[arg-type]
    update = lsn_update(region="syd", replica_id="a", lsn=1234, role="primary", in_recovery=False)
    watch.cluster.observe(update, time.monotonic() - 10)
    assert watch.snapshot().primary_lsn is None
    watch.cluster.observe(update, time.monotonic())
    assert watch.snapshot().primary_lsn == "0/4D2"


def test_the_json_picture_has_no_nan() -> None:
    """A NaN a malformed status carried (msgpack can) is null: ``top --once --json`` printed
    ``NaN``, which strict JSON parsers refuse."""
    watch = Watch(nc=None)  # type: ignore[arg-type]
    watch.statuses[("syd", "a")] = (
        _status("primary", lag_seconds=float("nan"), p50_ms=float("inf")), time.monotonic()
    )
    data = watch.snapshot().as_dict()
    assert data["rows"][0]["lag_seconds"] is None and data["rows"][0]["p50_ms"] is None
    json.dumps(data, allow_nan=False)
