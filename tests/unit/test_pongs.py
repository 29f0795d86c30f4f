"""guard_pongs on a stand-in for nats-py's client (pure logic; the real-server tests are in
tests/test_pongs.py)."""

from __future__ import annotations

import asyncio

from writebus.client.pongs import guard_pongs


class _Client:
    """nats-py's PONG handling, as in 2.16: complete the oldest future."""

    def __init__(self) -> None:
        self._pongs: list[asyncio.Future[bool]] = []
        self.received = 0

    async def _process_pong(self) -> None:
        if self._pongs:
            self._pongs.pop(0).set_result(True)
            self.received += 1


async def test_a_late_pong_goes_to_a_placeholder_and_the_next_to_its_ping() -> None:
    loop = asyncio.get_running_loop()
    nc = _Client()
    assert guard_pongs(nc) and guard_pongs(nc)  # idempotent
    timed_out, waiting = loop.create_future(), loop.create_future()
    nc._pongs += [timed_out, waiting]
    timed_out.cancel()
    await nc._process_pong()  # the late PONG: no InvalidStateError
    assert not waiting.done() and nc.received == 1
    await nc._process_pong()
    assert waiting.result() is True and nc._pongs == [] and nc.received == 2


def test_a_client_without_a_pong_queue_is_left_alone() -> None:
    assert guard_pongs(object()) is False
