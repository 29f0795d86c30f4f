"""A refused publish ends the requests waiting on its subject (the real-server test is in
tests/test_nats_auth.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest

from writebus.client.denials import Denials, PublishRefused, denials_of, refused_publish


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
    except PublishRefused as exc:
        assert exc.subject == subject
        return "refused"
    return "done"


async def _started(denials: Denials, subjects: list[str]) -> list[asyncio.Task[str]]:
    events = [asyncio.Event() for _ in subjects]
    tasks = [asyncio.create_task(_waiting(denials, s, e))
             for s, e in zip(subjects, events, strict=True)]  # fmt: skip
    for e in events:
        await e.wait()
    return tasks


async def test_each_refusal_ends_the_latest_wait_on_its_subject() -> None:
    """The refused publishes are the latest on their subject: a refusal ends the latest wait
    (an earlier one may have been delivered before the permissions changed), the next
    refusal the one before it; a wait on another subject goes on; nothing is left."""
    denials = Denials()
    tasks = await _started(denials, ["writebus.write", "writebus.write", "writebus.rpc.syd"])
    assert denials.refused("writebus.write")
    assert await tasks[1] == "refused"
    await asyncio.sleep(0.01)
    assert not tasks[0].done()
    assert denials.refused("writebus.write")
    assert await tasks[0] == "refused"
    assert not tasks[2].done()
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert denials._waiting == {} and not denials.refused("writebus.write")


async def test_two_refusals_in_one_read_end_each_wait_once() -> None:
    """The server's -ERR for two writes sent together come in one read: each wait ends as
    refused once (cancelled twice, the second cancellation escaped as CancelledError)."""
    denials = Denials()
    tasks = await _started(denials, ["writebus.write", "writebus.write"])
    assert denials.refused("writebus.write") and denials.refused("writebus.write")
    assert not denials.refused("writebus.write")
    assert [await t for t in tasks] == ["refused", "refused"]
    assert all(t.cancelling() == 0 for t in tasks)


async def test_the_subject_matches_whatever_its_case() -> None:
    """nats-py lowercases the server's words: a prefix or region with capitals still
    matches."""
    denials = Denials()
    (task,) = await _started(denials, ["App.write"])
    assert denials.refused("app.write") and await task == "refused"


async def test_a_wait_cancelled_by_its_caller_too_stays_cancelled() -> None:
    """Refused and cancelled by its caller at once: the caller's cancellation wins."""
    denials = Denials()
    (task,) = await _started(denials, ["writebus.write"])
    denials.refused("writebus.write")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_refusal_whose_cancellation_was_swallowed_leaves_nothing_behind() -> None:
    """Code under the wait swallows the cancellation (nats-py's flush under back-pressure
    does): the wait goes on to its end, and the task is not left cancelling."""
    denials = Denials()
    started, carry_on = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}

    async def swallowing() -> None:
        with denials.watching("writebus.write"):
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass
            await carry_on.wait()
        seen["cancelling"] = asyncio.current_task().cancelling()  # type: ignore[union-attr]
        await asyncio.sleep(0)  # no cancellation left to deliver

    task = asyncio.create_task(swallowing())
    await started.wait()
    denials.refused("writebus.write")
    await asyncio.sleep(0.01)
    carry_on.set()
    await task
    assert seen == {"cancelling": 0} and not denials._ended


async def test_a_cancellation_left_pending_before_the_wait_is_not_taken_for_another() -> None:
    """The task already had a cancellation swallowed before it began waiting (cancelling 1):
    a refusal still ends its wait as refused, not as a cancellation."""
    denials = Denials()
    started = asyncio.Event()

    async def after_a_swallowed_cancel() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # swallowed: cancelling() stays 1
        return await _waiting(denials, "writebus.write", started)

    task = asyncio.create_task(after_a_swallowed_cancel())
    await started.wait()
    assert denials.refused("writebus.write")
    assert await task == "refused"


async def test_a_refusal_after_a_wait_ended_unanswered_ends_no_other() -> None:
    """A request's wait timed out just before a refusal came: that refusal may be its own, so
    it ends no other wait -- a delivered one would be told "not applied". The live request, if
    refused too, gets its own refusal."""
    denials = Denials()

    async def times_out() -> None:
        with denials.watching("writebus.write"):
            raise nats.errors.TimeoutError

    (live,) = await _started(denials, ["writebus.write"])
    with pytest.raises(nats.errors.TimeoutError):
        await times_out()
    assert not denials.refused("writebus.write")
    await asyncio.sleep(0.01)
    assert not live.done()
    assert denials.refused("writebus.write") and await live == "refused"


async def test_a_long_attempt_that_timed_out_absorbs_no_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal comes within a round trip of its publish: a wait that ran longer than
    UNANSWERED_FOR before timing out was not refused, and the next refusal ends the live
    request (it absorbed it, and the refused request waited out its budget)."""
    from writebus.client import denials as module

    monkeypatch.setattr(module, "UNANSWERED_FOR", 0.05)
    denials = Denials()

    async def times_out_late() -> None:
        with denials.watching("writebus.write"):
            await asyncio.sleep(0.1)
            raise nats.errors.TimeoutError

    (live,) = await _started(denials, ["writebus.write"])
    with pytest.raises(nats.errors.TimeoutError):
        await times_out_late()
    assert denials.refused("writebus.write") and await live == "refused"


def test_each_connection_has_its_own() -> None:
    """One Denials per connection object."""

    class Conn:
        pass

    a, b = Conn(), Conn()
    assert denials_of(a) is denials_of(a) and denials_of(a) is not denials_of(b)
