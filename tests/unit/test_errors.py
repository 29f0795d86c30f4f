"""Which later answers settle an earlier try that may have committed
(:func:`writebus.client.errors.settles_an_earlier_try`); the paths that use it run on real
servers in tests/faults/test_connection_loss.py."""

from __future__ import annotations

from writebus.client.errors import (
    NoWorkerError,
    UnavailableError,
    WriteRejectedError,
    settles_an_earlier_try,
)


def test_only_a_statements_rejection_settles_an_earlier_try() -> None:
    """A statement ran, so the claim before it had waited for the id's lock and found it
    unapplied; a refused claim (a lock timeout), no worker or no database says nothing."""
    assert settles_an_earlier_try(WriteRejectedError("dup", sqlstate="23505", statement_index=0))
    assert not settles_an_earlier_try(WriteRejectedError("lock timeout", sqlstate="55P03"))
    assert not settles_an_earlier_try(NoWorkerError("writebus.write", "syd"))
    assert not settles_an_earlier_try(UnavailableError("database unavailable"))
