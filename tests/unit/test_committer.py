"""How the committer cuts the queue into groups and when it starts them (fake ``run``).

The database side of a group is tested on real servers in ``tests/test_group_commit.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Any

import pytest

from writebus.bus.committer import (
    Committer,
    _Waiting,
    group_limit,
    next_cost,
    overdue,
    placement,
    take_group,
)
from writebus.bus.cpuload import CpuSampler
from writebus.bus.execute import Job
from writebus.bus.group import Executed
from writebus.client.protocol import Request


def _job() -> Job:
    return Job(Request(id=uuid.uuid4().hex))


def test_take_group_keeps_order_and_bounds_count_and_bytes() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = deque(_Waiting(_job(), size, loop.create_future()) for size in (10, 10, 10, 500))
        first = take_group(queue, max_count=2, max_bytes=1000)
        assert [w.size for w in first] == [10, 10]
        second = take_group(queue, max_count=10, max_bytes=100)
        assert [w.size for w in second] == [10]  # 10 + 500 is over the byte bound
        assert [w.size for w in take_group(queue, max_count=10, max_bytes=100)] == [500]
    finally:
        loop.close()


def test_a_request_that_sets_something_is_a_group_of_its_own() -> None:
    """A request with SET LOCAL and the like (``Job.alone``) shares its transaction with no
    one: the group before it ends at it, and it goes alone; the next ones group again."""
    loop = asyncio.new_event_loop()
    try:
        jobs = [_job(), _job(), Job(Request(id="set"), alone=True), _job(), _job()]
        queue = deque(_Waiting(job, 1, loop.create_future()) for job in jobs)
        groups = [take_group(queue, max_count=10, max_bytes=1000) for _ in range(3)]
        assert [[w.job.req.id for w in g] for g in groups][1] == ["set"]
        assert [len(g) for g in groups] == [2, 1, 2] and not queue
    finally:
        loop.close()


def test_the_group_limit_follows_the_cost() -> None:
    """Fast requests group up to the maximum, slow ones run alone; no estimate: maximum."""
    assert group_limit(0.0, budget=0.05, max_count=64) == 64
    assert group_limit(0.0002, budget=0.05, max_count=64) == 64
    assert group_limit(0.005, budget=0.05, max_count=64) == 10
    assert group_limit(1.0, budget=0.05, max_count=64) == 1
    assert group_limit(1e-310, budget=0.05, max_count=64) == 64  # no overflow
    assert next_cost(0.0, 0.01, 10) == pytest.approx(0.001)
    assert 0.001 < next_cost(0.001, 0.1, 1) < 0.1  # moves toward the new observation


class FakeRun:
    """Records each group; a group finishes when the test releases it (or, with ``hold``,
    after that many seconds)."""

    def __init__(self, hold: float | None = None) -> None:
        self.groups: list[int] = []
        self.running = 0
        self.most_running = 0
        self.release = asyncio.Event()
        self.hold = hold

    async def __call__(self, jobs: list[Job]) -> list[Any]:
        self.groups.append(len(jobs))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.hold is None:
                await self.release.wait()
            else:
                await asyncio.sleep(self.hold)
        finally:
            self.running -= 1
        return [Executed([]) for _ in jobs]


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.001)


async def test_a_lone_request_starts_at_once_and_queued_ones_form_a_group() -> None:
    """One slot: the first request runs alone at once; the nine that arrive while it runs go
    together in the next group."""
    run = FakeRun()
    committer = Committer(run, connections=1, budget=60.0)
    committer.start()
    first = asyncio.create_task(committer.submit(_job()))
    await _until(lambda: run.groups == [1])
    rest = [asyncio.create_task(committer.submit(_job())) for _ in range(9)]
    await asyncio.sleep(0.01)
    assert run.groups == [1]  # nothing else started while the slot was busy
    run.release.set()
    outcomes = await asyncio.gather(first, *rest)
    assert run.groups == [1, 9] and all(isinstance(o, Executed) for o in outcomes)
    assert committer.mean_group == 5.0
    await committer.stop()


async def test_a_stalled_group_frees_its_slot_and_slow_work_runs_side_by_side() -> None:
    """Requests that take long (the group outlives the budget) stop holding the slot, and the
    queued ones, past the budget, start on other connections -- one per group, judged by how
    long the running group has taken, though no group has ended yet -- up to
    max_connections."""
    run = FakeRun()
    committer = Committer(run, connections=1, max_connections=6, budget=0.01)
    committer.start()
    calls = [asyncio.create_task(committer.submit(_job())) for _ in range(6)]
    await _until(lambda: run.running == 6)
    assert run.groups == [1] * 6 and committer.stalls >= 1
    assert sum(committer.past_slots.values()) >= 5  # stalled, overdue or alone
    run.release.set()
    await asyncio.gather(*calls)
    await committer.stop()


def test_where_the_next_group_starts() -> None:
    """A free slot first; past the slots once the oldest request waited the budget (a timer
    may fire a little early), or when a group could hold only one request; else wait."""
    assert not overdue(0.03, 0.05)
    assert overdue(0.05, 0.05) and overdue(0.0495, 0.05) and overdue(1.0, 0.05)
    assert placement(slot_free=True, waited=9.0, budget=0.05, limit=1) == "slot"
    assert placement(slot_free=False, waited=0.05, budget=0.05, limit=64) == "overdue"
    assert placement(slot_free=False, waited=0.0, budget=0.05, limit=1) == "alone"
    assert placement(slot_free=False, waited=0.03, budget=0.05, limit=2) is None


async def test_a_queue_that_waits_past_the_budget_starts_groups_past_the_slots() -> None:
    """Groups of two that end well within the budget never stall, so one slot alone would run
    forty requests twenty groups one after another (a second). Once the oldest queued one has
    waited the budget, the queue starts on other connections: several groups run at once."""
    run = FakeRun(hold=0.05)  # each group takes 50 ms: well under the 200 ms budget
    committer = Committer(run, connections=1, max_connections=8, max_count=2, budget=0.2)
    committer.start()
    outcomes = await asyncio.gather(*(committer.submit(_job()) for _ in range(40)))
    assert all(isinstance(o, Executed) for o in outcomes)
    assert sum(run.groups) == 40 and max(run.groups) == 2
    assert committer.past_slots["overdue"] >= 1 and run.most_running >= 2
    assert committer.past_slots["alone"] == 0 and committer.stalls == 0
    await committer.stop()


async def test_requests_too_slow_to_share_a_group_start_at_once() -> None:
    """At a cost of 30 ms a request, a 50 ms group holds one: four requests start at once on
    four connections, past the one slot, without waiting for anything."""
    run = FakeRun()
    committer = Committer(run, connections=1, max_connections=4, budget=0.05)
    committer.cost = 0.03
    committer.start()
    calls = [asyncio.create_task(committer.submit(_job())) for _ in range(4)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert run.groups == [1] * 4
    assert committer.past_slots == {"stalled": 0, "overdue": 0, "alone": 3}
    run.release.set()
    assert all(isinstance(o, Executed) for o in await asyncio.gather(*calls))
    await committer.stop()


async def test_a_stalled_slow_write_does_not_stop_the_fast_ones_grouping() -> None:
    """One write holds its group for seconds (stalled: it holds no slot) while bursts of fast
    writes queue behind the slot. The cost estimate follows the groups that hold slots, not
    the stalled one, so the fast writes group again while the slow one still runs (judged by
    the slow write's time, every overdue group was cut to one request)."""
    slow_id = uuid.uuid4().hex
    release = asyncio.Event()
    sizes: list[int] = []

    async def run(jobs: list[Job]) -> list[Any]:
        if any(j.req.id == slow_id for j in jobs):
            await release.wait()
        else:
            sizes.append(len(jobs))
            await asyncio.sleep(0.002 + 0.0005 * len(jobs))
        return [Executed([]) for _ in jobs]

    committer = Committer(run, connections=1, max_connections=8, budget=0.05)
    committer.start()
    slow = asyncio.create_task(committer.submit(Job(Request(id=slow_id))))
    await _until(lambda: committer.stalls == 1)
    await asyncio.sleep(0.2)
    for _ in range(5):
        await asyncio.gather(*(committer.submit(_job()) for _ in range(150)))
    assert not slow.done()
    assert max(sizes[-10:]) >= 10, sizes
    assert committer.cost < 0.05
    release.set()
    assert isinstance(await slow, Executed)
    await committer.stop()


async def test_with_every_connection_busy_the_queue_waits_without_a_timer() -> None:
    """One slot, two connections, both taken (the second by an overdue group): the queued
    requests wait for a group to end -- no timer is left re-firing for them -- and start as
    groups end; stop leaves no timer behind."""
    run = FakeRun()
    committer = Committer(run, connections=1, max_connections=2, budget=0.01)
    committer.start()
    calls = [asyncio.create_task(committer.submit(_job())) for _ in range(5)]
    await _until(lambda: run.running == 2)
    await asyncio.sleep(0.05)
    assert run.running == 2 and committer._overdue_timer is None
    run.release.set()
    assert all(isinstance(o, Executed) for o in await asyncio.gather(*calls))
    assert sum(run.groups) == 5 and run.most_running == 2
    await committer.stop()
    run = FakeRun()
    committer = Committer(run, connections=1, max_connections=2, budget=60.0)
    committer.start()
    running = asyncio.create_task(committer.submit(_job()))
    await _until(lambda: run.running == 1)
    queued = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0)
    assert committer._overdue_timer is not None  # a connection is free: watched
    await committer.stop()
    assert committer._overdue_timer is None
    await asyncio.gather(running, queued)


async def test_a_group_stopped_before_it_ran_answers_not_run() -> None:
    """Stop in the same step as a request was handed a group: its task is cancelled before
    it runs, nothing reached the database, and the request is answered "not run" (it used to
    be left waiting for ever); start again and the committer serves."""
    from writebus.client.errors import Outcome, UnavailableError

    run = FakeRun(hold=0.0)
    committer = Committer(run, connections=1, budget=60.0)
    committer.start()
    submitted = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0)  # submit has queued it and created the group's task, not run it
    await committer.stop()
    not_run = await asyncio.wait_for(submitted, 5)
    assert isinstance(not_run, UnavailableError) and not_run.outcome is Outcome.NOT_APPLIED
    assert run.groups == []
    committer.start()
    assert isinstance(await asyncio.wait_for(committer.submit(_job()), 5), Executed)
    await committer.stop()


async def test_stop_answers_queued_requests_as_not_run_and_running_ones_as_unknown() -> None:
    from writebus.client.errors import Outcome, OutcomeUnknownError, UnavailableError

    run = FakeRun()
    committer = Committer(run, connections=1, budget=60.0)
    committer.start()
    running = asyncio.create_task(committer.submit(_job()))
    await _until(lambda: run.running == 1)
    queued = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0.01)
    await committer.stop()
    unknown, not_run = await running, await queued
    assert isinstance(unknown, OutcomeUnknownError) and unknown.outcome is Outcome.UNKNOWN
    assert isinstance(not_run, UnavailableError) and not_run.outcome is Outcome.NOT_APPLIED


async def test_cancelling_stop_is_not_swallowed_and_leaves_no_request_waiting() -> None:
    """A group slow to end (its run finishes a step after being cancelled): cancelling the
    task that stops the committer raises CancelledError there -- it used to be swallowed, and
    the caller went on as if stopped -- while the queued request is already answered and the
    running one is answered once its group ends."""
    from writebus.client.errors import OutcomeUnknownError, UnavailableError

    gate = asyncio.Event()

    async def stubborn(jobs: list[Job]) -> list[Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await gate.wait()  # cleaning up takes a while
            raise
        return []

    committer = Committer(stubborn, connections=1, budget=60.0)
    committer.start()
    running = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(committer.stop())
    await asyncio.sleep(0.01)
    assert isinstance(await asyncio.wait_for(queued, 5), UnavailableError)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, 5)
    assert not running.done()
    gate.set()
    assert isinstance(await asyncio.wait_for(running, 5), OutcomeUnknownError)


async def test_closing_a_slot_keeps_one_group_in_flight_and_opening_it_starts_the_queue() -> None:
    """Two slots, one open (a busy CPU): the second request waits for the first group instead
    of starting beside it; reopening the slot starts it at once."""
    run = FakeRun()
    committer = Committer(run, connections=2, budget=60.0)
    committer.start()
    committer.set_slots(1)
    first = asyncio.create_task(committer.submit(_job()))
    await _until(lambda: run.running == 1)
    second = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0.01)
    assert run.running == 1 and run.groups == [1]
    committer.set_slots(5)  # capped at the two configured
    assert committer.slots == 2
    await _until(lambda: run.running == 2)
    run.release.set()
    assert all(isinstance(o, Executed) for o in await asyncio.gather(first, second))
    await committer.stop()


async def test_an_adaptive_committer_follows_the_cpu_and_leaves_nothing_behind() -> None:
    """``adaptive`` runs one sampling task while started, none after stop; with one slot
    configured there is nothing to adapt."""
    committer = Committer(FakeRun(), connections=2, adaptive=True)
    committer.start()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "group-slots-write" in names
    await committer.stop()
    await asyncio.sleep(0)
    assert "group-slots-write" not in {t.get_name() for t in asyncio.all_tasks()}
    single = Committer(FakeRun(), connections=1, adaptive=True)
    single.start()
    assert not single.adaptive and "group-slots-write" not in {
        t.get_name() for t in asyncio.all_tasks()
    }
    await single.stop()


async def test_closing_a_slot_while_two_groups_run_lets_them_finish_and_starts_no_third() -> None:
    """Both slots busy, then one closed: the running groups finish and are answered; the
    queued request starts only once a group has finished, alone in flight."""
    run = FakeRun()
    committer = Committer(run, connections=2, budget=60.0)
    committer.start()
    running = [asyncio.create_task(committer.submit(_job())) for _ in range(2)]
    await _until(lambda: run.running == 2)
    committer.set_slots(1)
    queued = asyncio.create_task(committer.submit(_job()))
    await asyncio.sleep(0.01)
    assert run.groups == [1, 1]
    run.release.set()
    assert all(isinstance(o, Executed) for o in await asyncio.gather(*running, queued))
    assert run.groups == [1, 1, 1] and run.most_running == 2
    await committer.stop()


async def test_an_adaptive_committer_closes_its_slots_on_a_busy_cpu_and_restarts_open() -> None:
    """With a sampler that always reads busy, the committer is down to one slot within a few
    samples; after stop, a new start begins with every slot open."""

    class Busy(CpuSampler):
        def __init__(self) -> None:
            pass

        def sample(self) -> float | None:
            return 1.0

    committer = Committer(
        FakeRun(), connections=2, adaptive=True, sampler=Busy(), sample_every=0.001
    )
    committer.start()
    await asyncio.wait_for(_until(lambda: committer.slots == 1), 5)
    await committer.stop()
    committer.start()
    assert committer.slots == 2
    await committer.stop()


async def test_a_bug_in_a_group_answers_each_request_unknown() -> None:
    """A group whose run raises (a bug, before or after its COMMIT) answers every request,
    each with its own id and outcome unknown -- never "not applied", never a hang."""
    from writebus.client.errors import Outcome, OutcomeUnknownError

    async def broken(jobs: list[Job]) -> list[Any]:
        raise RuntimeError("a bug")

    committer = Committer(broken, connections=1, budget=60.0)
    committer.start()
    try:
        jobs = [_job() for _ in range(3)]
        out = await asyncio.gather(*(committer.submit(j) for j in jobs))
    finally:
        await committer.stop()
    for job, answer in zip(jobs, out, strict=True):
        assert isinstance(answer, OutcomeUnknownError) and answer.outcome is Outcome.UNKNOWN
        assert answer.request_id == job.req.id and "RuntimeError: a bug" in str(answer)
