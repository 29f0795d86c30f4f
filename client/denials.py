"""Requests the NATS server refused to deliver: a publish outside the connection's permissions.

nats-server answers a publish its user may not make with ``-ERR 'Permissions Violation for
Publish to "<subject>"'`` and drops the message; nats-py hands that to the connection's error
callback and keeps the connection open. A request on that subject then gets no reply, and its
caller waited out its whole budget to learn "unknown outcome". For connections writebus makes
(:func:`~writebus.client.connect.connect_nats`), :class:`Denials` knows the requests in flight
on each subject, and a refusal ends each of them at once: the caller gets
:class:`~writebus.client.errors.ForbiddenError` -- not applied, and not worth retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import Iterator
from typing import Any

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
        self._waiting: dict[str, set[asyncio.Task[Any]]] = {}
        self._ended: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

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
        waiting = self._waiting.setdefault(key, set())
        waiting.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task in self._ended:
                self._ended.discard(task)
                if task.uncancel() == 0:
                    raise PublishRefused(subject) from None
            raise
        finally:
            waiting.discard(task)
            if not waiting and self._waiting.get(key) is waiting:
                del self._waiting[key]
            if task in self._ended:  # refused, but the cancellation was swallowed on the way
                self._ended.discard(task)
                task.uncancel()

    def refused(self, subject: str) -> int:
        """The server refused a publish to ``subject``: end every wait on it not ended yet
        (one read can carry several refusals). Returns how many it ended."""
        tasks = [t for t in self._waiting.get(subject.lower(), ()) if t not in self._ended]
        for task in tasks:
            self._ended.add(task)
            task.cancel(msg=f"NATS refused the publish to {subject!r}")
        return len(tasks)


_BY_CONNECTION: weakref.WeakKeyDictionary[Any, Denials] = weakref.WeakKeyDictionary()


def denials_of(nc: Any) -> Denials:
    """The :class:`Denials` of connection ``nc`` (made on first use)."""
    found = _BY_CONNECTION.get(nc)
    if found is None:
        found = _BY_CONNECTION[nc] = Denials()
    return found
