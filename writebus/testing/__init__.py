"""Test helpers for writebus users: a pytest plugin, a fake bus, and failures to inject.

Install ``writebus[testing]`` and pytest finds the plugin (:mod:`writebus.testing.plugin`):
fixtures for the embedded two-region stack (``writebus_stack``, ``writebus_db``,
``writebus_sync_db``) and for a :class:`FakeBus` on one local Postgres (``writebus_fake``,
``writebus_sync_fake``). docs/testing.md has a complete example.

::

    from writebus.testing import FakeFailure, OutcomeUnknown, rejected

    async def test_retry_after_unknown_outcome(writebus_fake):
        writebus_fake.fail_next(OutcomeUnknown(applied=True))
        ...
"""

from writebus.testing.failures import (
    Failure,
    FakeFailure,
    OutcomeUnknown,
    Rejected,
    error_for,
    rejected,
    runs_first,
)
from writebus.testing.fake import FakeBus, SyncFakeBus
from writebus.testing.stack import WritebusStack, start_stack
from writebus.testing.transport import LocalNats

__all__ = [
    "Failure",
    "FakeBus",
    "FakeFailure",
    "LocalNats",
    "OutcomeUnknown",
    "Rejected",
    "SyncFakeBus",
    "WritebusStack",
    "error_for",
    "rejected",
    "runs_first",
    "start_stack",
]
