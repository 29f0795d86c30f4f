"""Requests the NATS server refused to deliver: a publish outside the connection's permissions.

nats-server answers a publish its user may not make with ``-ERR 'Permissions Violation for
Publish to "<subject>"'`` and drops the message; nats-py hands that to the connection's error
callback and keeps the connection open. A request on that subject then gets no reply, and its
caller waited out its whole budget to learn "unknown outcome". For connections writebus makes
(:func:`~writebus.client.connect.connect_nats`), :class:`Denials` knows the requests in flight
on each subject, in the order they were sent, and each refusal ends one of them at once: the
caller gets :class:`~writebus.client.errors.ForbiddenError` -- not applied, and not worth
retrying.

Which one: the refusal does not say. The server refuses every publish its permissions forbid
and delivers every other, in the order sent, so the publishes refused on a subject are the
latest ones since its permissions last changed: the latest request in flight is refused for
sure, and one sent before it may have been delivered (the permissions tightened meanwhile).
So each refusal ends the latest request not ended yet, and no other. A request whose wait
ended without an answer (its caller gave up, or its time ran out) shortly before may have been
the refused one: a refusal then ends nothing -- a refused request still waiting gets its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from collections.abc import Iterator
from typing import Any

import nats.errors

#: Seconds after a request was sent that a refusal may still name it: the server refuses a
#: publish as it reads it, so its -ERR follows within a round trip to it.
UNANSWERED_FOR = 2.0

_PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


def refused_publish(exc: BaseException) -> str | None:
    """The subject of a publish the server refused for want of permission, or None."""
    found = _PUBLISH_REFUSED.search(str(exc))
    return found.group(1) if found else None


class PublishRefused(Exception):
    """The server refused the publish of the request being waited for (see :class:`Denials`)."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"NATS refused the publish to {subject!r}")
        self.subject = subject


class Denials:
    """The tasks waiting on a request per subject, and those a refusal ended."""

    def __init__(self) -> None:
        #: Per subject (lowercased), the tasks waiting, in the order they began.
        self._waiting: dict[str, dict[asyncio.Task[Any], int]] = {}
        self._ended: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        #: Per subject, when waits that ended unanswered began (monotonic seconds).
        self._unanswered: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def watching(self, subject: str) -> Iterator[None]:
        """Let a refusal of publishes to ``subject`` end the current task's wait in its block:
        it raises :class:`PublishRefused` -- unless the task was cancelled by someone else too,
        when their cancellation goes on."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        key = subject.lower()  # nats-py lowercases the server's words, subject included
        waiting = self._waiting.setdefault(key, {})
        waiting[task] = task.cancelling()  # cancellations already pending are not ours
        began = time.monotonic()
        try:
            yield
        except asyncio.CancelledError:
            if task in self._ended:  # a refusal's: used up here
                self._ended.discard(task)
                if task.uncancel() == waiting[task]:
                    raise PublishRefused(subject) from None
            else:
                self._note_unanswered(key, began)
            raise
        except nats.errors.TimeoutError:
            if task not in self._ended:
                self._note_unanswered(key, began)
            raise
        finally:
            waiting.pop(task, None)
            if not waiting and self._waiting.get(key) is waiting:
                del self._waiting[key]
            if task in self._ended:  # refused, but the cancellation was swallowed on the way
                self._ended.discard(task)
                task.uncancel()

    def _recent(self, key: str) -> list[float]:
        now = time.monotonic()
        kept = [t for t in self._unanswered.get(key, ()) if now - t < UNANSWERED_FOR]
        if kept:
            self._unanswered[key] = kept
        else:
            self._unanswered.pop(key, None)
        return kept

    def _note_unanswered(self, key: str, began: float) -> None:
        """A wait begun at ``began`` ended unanswered: its refusal, if any, comes within
        :data:`UNANSWERED_FOR` of it (a long attempt that timed out was not refused)."""
        if time.monotonic() - began < UNANSWERED_FOR:
            self._recent(key)  # the old ones go first: nothing grows
            self._unanswered.setdefault(key, []).append(began)

    def refused(self, subject: str) -> bool:
        """The server refused a publish to ``subject``: end the latest wait on it not ended
        yet (see the module's docstring). Returns whether there was one."""
        key = subject.lower()
        recent = self._recent(key)
        if recent:  # perhaps that one's: end none
            recent.pop(0)
            return False
        for task in reversed(self._waiting.get(key, {})):
            if task not in self._ended:
                self._ended.add(task)
                task.cancel(msg=f"NATS refused the publish to {subject!r}")
                return True
        return False


_BY_CONNECTION: weakref.WeakKeyDictionary[Any, Denials] = weakref.WeakKeyDictionary()


def denials_of(nc: Any) -> Denials:
    """The :class:`Denials` of connection ``nc`` (made on first use)."""
    found = _BY_CONNECTION.get(nc)
    if found is None:
        found = _BY_CONNECTION[nc] = Denials()
    return found
