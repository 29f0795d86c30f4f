"""Forming groups from the statement writes that are waiting (group commit).

Requests are never held back to make a group: a write that arrives while a committer slot is
free starts at once, alone. Groups form only from requests that queued up while every slot was
busy; the next free slot takes them (up to a count and ``max_bytes`` of parameters) into one
transaction (:mod:`writebus.bus.group`). A lone request therefore pays nothing, and a busy
worker commits many requests per COMMIT, per flush-LSN read and per round trip.

Grouping must not turn slow writes into a queue. Requests in a group run one after another, so
a group of 64 one-second statements would answer its last request after a minute. Two rules
keep that from happening:

* **The group size follows the cost.** The committer keeps a running estimate of the time one
  request takes inside a group; a group holds at most ``budget`` seconds of expected work
  (:func:`group_limit`). Fast inserts group by the dozen; a ``pg_sleep(1)`` runs alone.
* **A stalled group gives its slot up.** A group still running after ``budget`` seconds stops
  counting against the ``connections`` slots, so the next queued requests start on another
  connection (up to ``max_connections`` groups at once). Slow writes then run side by side, as
  they would without grouping, while fast writes keep few, large groups.
* **Nothing waits for a slot that grouping cannot use.** Writes a little under the budget
  (a 30 ms transaction) never stall, so the slots alone would cap a worker at ``connections``
  such writes at a time -- about 60 a second with two slots -- however many connections it
  has. So a group also starts past the slots (up to ``max_connections``) when it could hold
  only one request at the current cost (``"alone"``: waiting would form no group), and when
  the oldest queued request has waited ``budget`` seconds (``"overdue"``: the slots are not
  keeping up). Fast writes, whose groups hold dozens and end well within the budget, meet
  neither and keep their few, large groups.

How many slots are open follows the CPU (``adaptive``, :mod:`writebus.bus.cpuload`): all of
them while it has room -- a second group overlaps the first one's wait on the database -- and
one while it is busy, when a second group would only split the queue into smaller groups.

How the queue is cut is :func:`take_group` and :func:`group_limit`, both pure.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from writebus.bus.cpuload import INTERVAL, CpuSampler, SlotPolicy, adapt
from writebus.bus.execute import Job
from writebus.bus.group import Executed
from writebus.client.errors import OutcomeUnknownError, UnavailableError, WriteBusError
from writebus.client.log import get_logger

log = get_logger("writebus.bus.committer")

Outcome = Executed | WriteBusError
RunGroup = Callable[[list[Job]], Awaitable[list[Outcome]]]

#: Seconds of expected work in one group, and how long a group runs before its slot is freed.
DEFAULT_BUDGET = 0.05
#: Weight of the newest group in the per-request cost estimate.
COST_WEIGHT = 0.3
#: Seconds early a queued request still counts as having waited the budget.
OVERDUE_SLACK = 0.001


@dataclass
class _Waiting:
    job: Job
    size: int
    future: asyncio.Future[Outcome]
    #: Event-loop time it was queued.
    queued: float = 0.0


def take_group(queue: deque[_Waiting], *, max_count: int, max_bytes: int) -> list[_Waiting]:
    """Pop the next group off ``queue``: in arrival order, at most ``max_count`` requests and
    ``max_bytes`` of parameters -- but always at least one, however large. A request that
    sets something for its transaction (``Job.alone``) is a group of its own."""
    group: list[_Waiting] = []
    size = 0
    while queue and len(group) < max_count:
        nxt = queue[0]
        if group and (size + nxt.size > max_bytes or group[0].job.alone or nxt.job.alone):
            break
        group.append(queue.popleft())
        size += nxt.size
    return group


def group_limit(cost: float, *, budget: float, max_count: int) -> int:
    """How many requests the next group may hold: as many as fit ``budget`` seconds at
    ``cost`` seconds each (no estimate yet: ``max_count``), at least one."""
    if cost * max_count <= budget:  # no estimate yet, or cheap: no overflow for a tiny cost
        return max_count
    return max(1, min(max_count, int(budget / cost)))


def overdue(waited: float, budget: float) -> bool:
    """Whether a request that has waited ``waited`` seconds in the queue may start past the
    slots. A millisecond early counts: the timer that checks may fire that much before."""
    return waited + OVERDUE_SLACK >= budget


def placement(*, slot_free: bool, waited: float, budget: float, limit: int) -> str | None:
    """Where the next group starts, for a queue whose oldest request has waited ``waited``
    seconds and whose groups may hold ``limit`` requests: ``"slot"`` (a slot is free),
    ``"overdue"`` (past the slots: it waited the budget), ``"alone"`` (past the slots: a group
    could hold only this one request, so waiting for a slot would form nothing), or None
    (wait for a slot)."""
    if slot_free:
        return "slot"
    if overdue(waited, budget):
        return "overdue"
    if limit == 1:
        return "alone"
    return None


def next_cost(cost: float, seconds: float, count: int) -> float:
    """The per-request cost estimate after a group of ``count`` took ``seconds``."""
    observed = seconds / count
    return observed if cost <= 0 else cost + COST_WEIGHT * (observed - cost)


class _Running:
    """One group in flight: when it started, its size, and whether it holds no slot (it
    stalled, or started past the slots)."""

    __slots__ = ("begun", "count", "stalled", "started")

    def __init__(self, started: float, count: int, *, stalled: bool = False) -> None:
        self.started = started
        self.count = count
        self.stalled = stalled
        #: The group's task has started running (a task cancelled before that never does).
        self.begun = False


def _not_run(waiting: Iterable[_Waiting]) -> None:
    """Answer requests that never reached the database: the worker is stopping."""
    for w in waiting:
        if not w.future.done():
            w.future.set_result(UnavailableError("the worker is stopping; not run"))


def least_cost(now: float, running: Iterable[_Running]) -> float:
    """What one request costs at least, judging by the groups still running: a group of ``n``
    that has run ``t`` seconds takes at least ``t / n`` a request (0: none running)."""
    return max(((now - r.started) / r.count for r in running), default=0.0)


class Committer:
    """Runs queued statement writes in groups with ``run``: at most ``connections`` groups
    that are not stalled, and ``max_connections`` in all.

    With ``adaptive``, the slots past the first are open only while the CPU has room
    (:mod:`writebus.bus.cpuload`): a busy CPU gets fewer, larger groups."""

    def __init__(
        self,
        run: RunGroup,
        *,
        connections: int = 4,
        max_connections: int | None = None,
        max_count: int = 64,
        max_bytes: int = 1024 * 1024,
        budget: float = DEFAULT_BUDGET,
        name: str = "write",
        adaptive: bool = False,
        sampler: CpuSampler | None = None,
        sample_every: float = INTERVAL,
    ) -> None:
        self.run = run
        self.connections = connections
        #: Slots open now: ``connections``, or fewer while the CPU is busy (``adaptive``).
        self.slots = connections
        self.adaptive = adaptive and connections > 1
        self._sampler = sampler
        self._sample_every = sample_every
        self._adapter: asyncio.Task[None] | None = None
        self.max_connections = max(connections, max_connections or connections)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.budget = budget
        self.name = name
        self._queue: deque[_Waiting] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0  # groups holding a slot
        self._running: set[_Running] = set()  # groups in flight, stalled or not
        self._stopping = False
        #: Seconds one request takes inside a group (a moving estimate; 0: none yet).
        self.cost = 0.0
        #: Groups run, and requests in them (mean group size = requests / groups).
        self.groups = 0
        self.requests = 0
        #: Groups that ran past the slots, by reason: "stalled" (gave its slot up after the
        #: budget), or :func:`placement`'s "overdue" and "alone".
        self.past_slots: dict[str, int] = {"stalled": 0, "overdue": 0, "alone": 0}
        self._overdue_timer: asyncio.TimerHandle | None = None
        self._overdue_head: _Waiting | None = None

    def __repr__(self) -> str:
        return (
            f"<Committer {self.name} queued={len(self._queue)} active={self._active}/"
            f"{self.slots} of {self.connections} running={len(self._running)}/"
            f"{self.max_connections} groups={self.groups}>"
        )

    @property
    def stalls(self) -> int:
        """Groups that gave their slot up after running for the budget."""
        return self.past_slots["stalled"]

    @property
    def mean_group(self) -> float:
        """Requests per group so far."""
        return self.requests / self.groups if self.groups else 0.0

    def start(self) -> None:
        """Accept requests (groups start as they queue); with ``adaptive``, start following
        the CPU (call from the event loop)."""
        self._stopping = False
        self.slots = self.connections
        if self.adaptive and self._adapter is None:
            self._adapter = asyncio.create_task(
                adapt(
                    self.set_slots,
                    SlotPolicy(self.connections),
                    self._sampler or CpuSampler(),
                    interval=self._sample_every,
                ),
                name=f"group-slots-{self.name}",
            )

    def set_slots(self, slots: int) -> None:
        """Keep ``slots`` groups in flight (1 to ``connections``); more open slots start
        queued requests at once, fewer let the groups in flight finish."""
        self.slots = max(1, min(slots, self.connections))
        self._dispatch()

    async def stop(self) -> None:
        """Stop: groups in flight are cancelled (their requests' outcome is unknown) and the
        queued requests are answered as not run (retryable). Cancelling ``stop`` itself
        cancels only its wait for the cancelled groups to end (they still answer theirs)."""
        self._stopping = True
        tasks = list(self._tasks)
        if self._adapter is not None:
            tasks.append(self._adapter)
            self._adapter = None
        for task in tasks:
            task.cancel()
        self._disarm()
        _not_run(self._queue)
        self._queue.clear()
        if tasks:
            await asyncio.wait(tasks)  # their end, however they ended; cancelling stop() raises

    async def submit(self, job: Job, size: int = 0) -> Outcome:
        """Queue a validated statement write (``size``: its parameters' bytes) and wait for
        its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append(_Waiting(job, size, future, loop.time()))
        if len(self._queue) == 1:
            # A new head. Behind an older one nothing has changed since the last dispatch left
            # it waiting (every change -- a group's end, a stall, the slots -- dispatches), so
            # only the head's timer can start it.
            self._dispatch()
        return await future

    def _dispatch(self) -> None:
        """Start groups from the queue while a connection is free: in a free slot, or past the
        slots when the oldest queued request has waited ``budget`` seconds or when groups can
        hold only one request anyway (:func:`placement`). Then watch the new oldest request."""
        loop = asyncio.get_running_loop()
        while self._queue and not self._stopping and len(self._running) < self.max_connections:
            now = loop.time()
            waited = now - self._queue[0].queued
            slot_free = self._active < self.slots
            if not slot_free and overdue(waited, self.budget):
                # The groups that kept this request waiting -- those holding slots, not the
                # stalled ones -- say what a request costs at least: before any group has
                # ended, the only estimate there is.
                holding = (r for r in self._running if not r.stalled)
                self.cost = max(self.cost, least_cost(now, holding))
            limit = group_limit(self.cost, budget=self.budget, max_count=self.max_count)
            where = placement(slot_free=slot_free, waited=waited, budget=self.budget, limit=limit)
            if where is None:
                break
            group = take_group(self._queue, max_count=limit, max_bytes=self.max_bytes)
            running = _Running(now, len(group), stalled=where != "slot")
            if where == "slot":
                self._active += 1
            else:
                self.past_slots[where] += 1
            self._running.add(running)
            task = asyncio.create_task(
                self._run_group(group, running), name=f"group-{self.name}"
            )
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._ended, group, running))
        self._watch_head(loop)

    def _ended(self, group: list[_Waiting], running: _Running, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if running.begun:
            return  # _run_group answered its requests
        # Cancelled (by stop) before it ran: nothing reached the database.
        self._running.discard(running)
        if not running.stalled:
            self._active -= 1
        _not_run(group)

    def _watch_head(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have :meth:`_dispatch` run again when the oldest queued request has waited the
        budget (one timer, moved only when the oldest request changes). With every
        connection busy there is nothing to watch for: the next group to end dispatches."""
        waiting = (
            self._queue and not self._stopping and len(self._running) < self.max_connections
        )
        head = self._queue[0] if waiting else None
        if head is self._overdue_head:
            return
        self._disarm()
        if head is not None:
            self._overdue_head = head
            self._overdue_timer = loop.call_at(head.queued + self.budget, self._on_overdue)

    def _on_overdue(self) -> None:
        self._overdue_timer = self._overdue_head = None
        self._dispatch()

    def _disarm(self) -> None:
        if self._overdue_timer is not None:
            self._overdue_timer.cancel()
        self._overdue_timer = self._overdue_head = None

    def _stall(self, running: _Running) -> None:
        """A group has run for ``budget`` seconds: free its slot; it is slow work."""
        running.stalled = True
        self.past_slots["stalled"] += 1
        self._active -= 1
        self.cost = max(self.cost, self.budget / running.count)
        self._dispatch()

    async def _run_group(self, group: list[_Waiting], running: _Running) -> None:
        running.begun = True
        loop = asyncio.get_running_loop()
        started = running.started
        timer = None if running.stalled else loop.call_later(self.budget, self._stall, running)
        try:
            outcomes = await self.run([w.job for w in group])
        except asyncio.CancelledError:
            for w in group:  # the group may or may not have committed
                if not w.future.done():
                    w.future.set_result(
                        OutcomeUnknownError(w.job.req.id, "the worker stopped mid-commit")
                    )
            raise
        except Exception as exc:  # a bug: answer every request rather than hang them
            log.exception("committer.failed", requests=len(group))
            outcomes = [
                OutcomeUnknownError(w.job.req.id, f"internal: {type(exc).__name__}: {exc}")
                for w in group
            ]  # a bug, before or after COMMIT: nothing says which
        finally:
            if timer is not None:
                timer.cancel()
            self._running.discard(running)
            if not running.stalled:
                self._active -= 1
        self.cost = next_cost(self.cost, loop.time() - started, len(group))
        self.groups += 1
        self.requests += len(group)
        for waiting, outcome in zip(group, outcomes, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(outcome)
        self._dispatch()
