"""A silent region subject is reported once, naming the regions heard and the likely typo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from tests.support.fake_nats import FakeServer
from writebus.client.protocol import encode, lsn_update
from writebus.client.region import likely_region
from writebus.client.settings import Settings
from writebus.client.silence import silence_message
from writebus.client.tracker import LsnTracker

HB = 0.02


def test_likely_region_names_the_close_one() -> None:
    """lxa is probably lax; a heard region is no typo; nothing close, no guess."""
    assert likely_region("lxa", {"syd", "lax"}) == "lax"
    assert likely_region("lax", {"syd", "lax"}) is None
    assert likely_region("fra", {"syd", "lax"}) is None


def test_the_message_says_what_is_heard_and_what_to_fix() -> None:
    """The warning names this region, the regions broadcasting and the guess."""
    text = silence_message("lxa", {"syd", "lax"})
    assert "'lxa'" in text and "lax, syd" in text and "did you mean 'lax'?" in text
    assert "is a bus node running" in silence_message("lax", set())


async def _broadcasts(server: FakeServer, regions: list[str]) -> None:
    nc = server.client()
    lsn = 1
    while True:
        for region in regions:
            upd = lsn_update(region=region, replica_id="r", lsn=lsn, role="replica",
                             in_recovery=True)
            await nc.publish(f"writebus.lsn.{region}", encode(upd))
        lsn += 1
        await asyncio.sleep(HB / 2)  # a publisher's cadence


@pytest.fixture
async def broadcasting() -> AsyncIterator[FakeServer]:
    """A fake NATS where syd and lax broadcast every half heartbeat."""
    server = FakeServer()
    task = asyncio.create_task(_broadcasts(server, ["syd", "lax"]))
    yield server
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _tracker(server: FakeServer, region: str) -> LsnTracker:
    settings = Settings(region=region, primary_region="syd", heartbeat_interval=HB)
    tracker = LsnTracker(settings, server.client())
    await tracker.start()
    return tracker


async def test_a_misspelled_region_is_warned_once(
    broadcasting: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """FLY_REGION=lxa: after a few silent heartbeats one warning names lax; it is not
    repeated while the silence lasts."""
    with caplog.at_level(logging.WARNING, logger="writebus.client.tracker"):
        tracker = await _tracker(broadcasting, "lxa")
        try:
            assert tracker.silence is not None
            while tracker.silence.warnings == 0:
                await asyncio.sleep(HB)
            await asyncio.sleep(10 * HB)  # long enough for a repeat, which must not come
        finally:
            await tracker.close()
    warnings = [r for r in caplog.records if r.writebus["event"] == "tracker.region_silent"]
    assert len(warnings) == 1
    assert "did you mean 'lax'" in warnings[0].writebus["message"]


async def test_a_region_that_is_heard_is_not_warned(
    broadcasting: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """lax hears its own broadcasts: no warning, however long it runs."""
    with caplog.at_level(logging.WARNING, logger="writebus.client.tracker"):
        tracker = await _tracker(broadcasting, "lax")
        try:
            while tracker.updates_received < 20:
                await asyncio.sleep(HB)
            assert tracker.silence is not None and tracker.silence.warnings == 0
        finally:
            await tracker.close()
    assert not [r for r in caplog.records if "region_silent" in r.getMessage()]


def test_a_replica_id_that_matches_no_node_is_named_not_the_region() -> None:
    """The region is heard, but not from the replica this process names: the warning says
    which replicas broadcast and the likely one -- not that the region is misspelled."""
    text = silence_message("lax", {"syd"}, replica_id="lax-db-1", replicas={"lax-db-2", "x"})
    assert "'lax-db-1' (WRITEBUS_REPLICA_ID)" in text and "lax-db-2, x" in text
    assert "did you mean 'lax-db-2'?" in text and "FLY_REGION" not in text


async def test_a_mistyped_replica_id_is_warned_once_naming_the_replicas_heard(
    broadcasting: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """WRITEBUS_REPLICA_ID=q in lax, where replica r broadcasts: one warning names r. It said
    the region was silent and guessed another region."""
    settings = Settings(region="lax", primary_region="syd", heartbeat_interval=HB, replica_id="q")
    with caplog.at_level(logging.WARNING, logger="writebus.client.tracker"):
        tracker = LsnTracker(settings, broadcasting.client())
        await tracker.start()
        try:
            assert tracker.silence is not None
            while tracker.silence.warnings == 0:
                await asyncio.sleep(HB)
        finally:
            await tracker.close()
    (warning,) = [r for r in caplog.records if r.writebus["event"] == "tracker.region_silent"]
    assert "replica 'q' (WRITEBUS_REPLICA_ID)" in warning.writebus["message"]
    assert "region 'lax' broadcasts from r." in warning.writebus["message"]
