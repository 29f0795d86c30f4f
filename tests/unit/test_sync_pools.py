"""The SyncDatabase's pool on the primary for ``fallback="primary"`` reads: one for every
thread, none once closed (the pool is stood in for; the reads themselves run against real
servers in ``tests/test_sync.py``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from writebus.client import sync
from writebus.client.errors import WriteBusError
from writebus.client.settings import Settings
from writebus.client.sync import SyncDatabase

LAX = Settings(region="lax", primary_region="syd", database_url="postgresql://r/db",
               primary_database_url="postgresql://p/db")  # fmt: skip


def test_threads_falling_back_at_once_share_one_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads reading with fallback="primary" at once get the same pool (each used to
    open its own, and one leaked with its threads and connection); after close, none is
    opened."""
    opened: list[object] = []

    def slow_open(*args: Any, **kwargs: Any) -> object:
        time.sleep(0.02)
        opened.append(pool := object())
        return pool

    monkeypatch.setattr(sync, "open_sync_pool", slow_open)
    sdb = SyncDatabase(LAX)
    sdb._adb = object()  # type: ignore[assignment]  # open, as far as the pool is concerned
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(sdb._primary_pool())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1 and got == [opened[0], opened[0]]
    closed = SyncDatabase(LAX)
    with pytest.raises(WriteBusError, match="not open"):
        closed._primary_pool()
    assert len(opened) == 1
