"""ReadGate.at_once: which reads need nothing from the tracker's loop (pure decisions)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from writebus.client.errors import ProtocolError, WriteBusError
from writebus.client.reads import ReadGate
from writebus.client.retry import RetryPolicy
from writebus.client.settings import Settings
from writebus.client.tokens import make_token

LAX = Settings(region="lax", primary_region="syd")


def _at_once(tracker: Any, settings: Settings = LAX, **options: Any) -> Any:
    kwargs: dict[str, Any] = dict(after=None, session_lsn=None, consistency=None, max_lag=None,
                                  fallback="raise")  # fmt: skip
    kwargs.update(options)
    return ReadGate(settings, RetryPolicy()).at_once(tracker=tracker, **kwargs)


def test_a_plain_read_or_a_replayed_token_runs_at_once() -> None:
    tracker = SimpleNamespace(replayed=500)
    assert _at_once(tracker) == "local"
    assert _at_once(tracker, after=make_token(400)) == "local"
    assert _at_once(tracker, session_lsn=500, consistency="session") == "local"


def test_what_must_wait_or_ask_is_left_to_prepare() -> None:
    tracker = SimpleNamespace(replayed=500)
    assert _at_once(tracker, after=make_token(501)) is None
    assert _at_once(SimpleNamespace(replayed=None), session_lsn=1) is None
    assert _at_once(tracker, consistency="strong") is None
    assert _at_once(tracker, max_lag=1.0) is None


def test_the_primary_region_never_waits_and_bad_options_always_raise() -> None:
    syd = Settings(region="syd", primary_region="syd")
    assert _at_once(None, syd, consistency="strong", max_lag=1.0) == "local"
    with pytest.raises(ValueError, match="consistency"):
        _at_once(None, syd, consistency="linearizable")
    with pytest.raises(ValueError, match="fallback"):
        _at_once(SimpleNamespace(replayed=1), fallback="replica")
    with pytest.raises(ProtocolError, match="session token"):
        _at_once(SimpleNamespace(replayed=1), after="not-a-token")


def test_a_read_that_must_wait_raises_without_a_tracker() -> None:
    """No tracker outside the primary region: the Database is not open (or closed). A plain
    read may still run; one that waits for a write cannot, and says so rather than reading a
    replica that may be behind."""
    assert _at_once(None) == "local"
    for options in ({"after": make_token(1)}, {"session_lsn": 1}, {"consistency": "strong"},
                    {"max_lag": 1.0}):  # fmt: skip
        with pytest.raises(WriteBusError, match="not open"):
            _at_once(None, **options)


class _Pool:
    """Stands in for a pool on the primary: counts how many were opened and closed."""

    opened = 0
    last: _Pool | None = None

    def __init__(self) -> None:
        _Pool.opened += 1
        _Pool.last = self
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_concurrent_reads_open_one_primary_pool_and_none_after_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two reads falling back to the primary at once share one pool (the second used to open
    its own, and the first leaked); a pool that finishes opening after close() is closed,
    and the read says the Database is not open; once reopened, reads get a pool again."""
    import asyncio

    from writebus.client import reads

    async def slow_open(*args: Any, **kwargs: Any) -> _Pool:
        await asyncio.sleep(0.01)
        return _Pool()

    monkeypatch.setattr(reads, "open_pool", slow_open)
    _Pool.opened = 0
    settings = LAX.replace(database_url="postgresql://r/db", primary_database_url="postgresql://p/db")
    gate = ReadGate(settings, RetryPolicy())
    first, second = await asyncio.gather(gate.primary_pool(), gate.primary_pool())
    assert first is second and _Pool.opened == 1
    late = ReadGate(settings, RetryPolicy())
    opening = asyncio.create_task(late.primary_pool())
    await asyncio.sleep(0)
    await late.close()
    with pytest.raises(WriteBusError, match="not open"):
        await opening
    assert _Pool.opened == 2 and late._primary_pool is None
    assert _Pool.last is not None and _Pool.last.closed
    assert await late.primary_pool() is _Pool.last is not None  # reopened: a pool again
    assert _Pool.opened == 3
