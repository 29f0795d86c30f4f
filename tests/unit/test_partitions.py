"""Which partitions must exist, their names, and reading their bounds back."""

from __future__ import annotations

import datetime

from writebus.bus import partitions

UTC = datetime.UTC


def test_bounds_are_whole_hours_from_the_current_one_to_those_ahead() -> None:
    now = datetime.datetime(2026, 11, 28, 23, 41, 7, tzinfo=UTC)
    bounds = partitions.partition_bounds(now)
    assert [b[0].hour for b in bounds] == [23, 0, 1]
    assert all(end - start == datetime.timedelta(hours=1) for start, end in bounds)
    assert bounds[0][0] <= now < bounds[0][1]


def test_bounds_since_reach_back_to_the_hour_holding_it() -> None:
    now = datetime.datetime(2026, 11, 28, 23, 41, tzinfo=UTC)
    since = now - datetime.timedelta(hours=5, minutes=50)
    bounds = partitions.partition_bounds(now, since=since)
    assert bounds[0][0] <= since < bounds[0][1]
    assert bounds[-1][0] == datetime.datetime(2026, 11, 29, 1, tzinfo=UTC)


def test_a_partition_is_named_by_its_start_in_utc() -> None:
    start = datetime.datetime(2026, 11, 29, 10, tzinfo=datetime.timezone(datetime.timedelta(hours=11)))
    assert partitions.partition_name(start) == "applied_20261128_230000"


def test_upper_bounds_read_as_pg_get_expr_prints_them_in_iso() -> None:
    read = partitions._upper_bound
    bound = "FOR VALUES FROM ('2026-11-28 23:00:00+00') TO ('2026-11-29 00:00:00+00')"
    assert read(bound) == datetime.datetime(2026, 11, 29, tzinfo=UTC)
    india = "FOR VALUES FROM ('2026-11-29 04:30:00+05:30') TO ('2026-11-29 05:30:00+05:30')"
    assert read(india) == datetime.datetime(2026, 11, 29, tzinfo=UTC)
    assert read("DEFAULT") is None
    assert read("FOR VALUES FROM ('x') TO ('28/11/2026 23:00:00 UTC')") is None


def test_only_transactions_long_under_way_hold_the_drops_up() -> None:
    holders = [
        {"pid": 1, "transaction_s": 0.2, "mode": "RowExclusiveLock"},
        {"pid": 2, "transaction_s": 3600.5, "mode": "AccessShareLock"},
        {"pid": 3, "transaction_s": None, "mode": "AccessShareLock"},  # no transaction start
        {"pid": 4, "transaction_s": partitions.LONG_TRANSACTION_S, "mode": "RowExclusiveLock"},
    ]
    assert [h["pid"] for h in partitions.long_holders(holders)] == [2, 4]
    assert partitions.long_holders([]) == []
