"""A refused publish ends the requests waiting on its subject (the real-server test is in
tests/test_nats_auth.py)."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from writebus.client.denials import Denials, denials_of, refused_publish


def test_the_refused_subject_is_read_from_the_servers_words() -> None:
    """nats-py's error for nats-server's -ERR names the subject; other errors name none."""
    err = nats.errors.Error('nats: permissions violation for publish to "writebus.write"')
    assert refused_publish(err) == "writebus.write"
    sub = nats.errors.Error('nats: permissions violation for subscription to "writebus.write"')
    assert refused_publish(sub) is None
    assert refused_publish(nats.errors.TimeoutError()) is None


async def _waiting(denials: Denials, subject: str, started: asyncio.Event) -> str:
    try:
        with denials.watching(subject):
            started.set()
            await asyncio.sleep(60)
    except asyncio.CancelledError:
        if denials.ended(asyncio.current_task()):
            return "refused"
        raise
    return "done"


async def test_a_refusal_ends_the_waits_on_its_subject_alone() -> None:
    """Two waits on writebus.write end, one on another subject goes on; nothing is left."""
    denials = Denials()
    events = [asyncio.Event() for _ in range(3)]
    subjects = ["writebus.write", "writebus.write", "writebus.rpc.syd"]
    tasks = [asyncio.create_task(_waiting(denials, s, e)) for s, e in zip(subjects, events, strict=True)]
    for e in events:
        await e.wait()
    assert denials.refused("writebus.write") == 2
    assert await tasks[0] == "refused" and await tasks[1] == "refused"
    assert not tasks[2].done()
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert denials._waiting == {} and denials.refused("writebus.write") == 0


async def test_a_wait_cancelled_by_its_caller_too_stays_cancelled() -> None:
    """Refused and cancelled by its caller at once: the caller's cancellation wins."""
    denials = Denials()
    started = asyncio.Event()
    task = asyncio.create_task(_waiting(denials, "writebus.write", started))
    await started.wait()
    denials.refused("writebus.write")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_each_connection_has_its_own() -> None:
    """One Denials per connection object."""

    class Conn:
        pass

    a, b = Conn(), Conn()
    assert denials_of(a) is denials_of(a) and denials_of(a) is not denials_of(b)
