"""Which later answers settle an earlier try that may have committed
(:func:`writebus.client.errors.after_an_uncertain_try`); the paths that use it run on real
servers in tests/faults/test_connection_loss.py."""

from __future__ import annotations

from writebus.client.errors import (
    LostInFailoverError,
    NoWorkerError,
    Outcome,
    OutcomeUnknownError,
    ReplicationTimeoutError,
    TrackerError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
    after_an_uncertain_try,
    committed_at,
)


def settles_an_earlier_try(err: WriteBusError) -> bool:
    """Whether ``err`` stands as the write's answer after an uncertain earlier try."""
    answer = after_an_uncertain_try(err, "r1", "an earlier try may have committed")
    if answer is err:
        return True
    assert isinstance(answer, OutcomeUnknownError) and answer.last_error is err
    assert answer.request_id == "r1" and str(err) in str(answer)
    return False


def test_only_a_statements_rejection_settles_an_earlier_try() -> None:
    """A statement ran, so the claim before it had waited for the id's lock and found it
    unapplied; a refused claim (a lock timeout), no worker or no database says nothing."""
    assert settles_an_earlier_try(WriteRejectedError("dup", sqlstate="23505", statement_index=0))
    assert not settles_an_earlier_try(WriteRejectedError("lock timeout", sqlstate="55P03"))
    assert not settles_an_earlier_try(NoWorkerError("writebus.write", "syd"))
    assert not settles_an_earlier_try(UnavailableError("database unavailable"))
    unknown = OutcomeUnknownError("r1", "lost again")  # not a "not applied": it stands
    assert after_an_uncertain_try(unknown, "r1", "lost") is unknown
    assert after_an_uncertain_try(None, "r1", "lost") is None  # a result stands


def test_a_committed_write_whose_wait_failed_keeps_its_position() -> None:
    """committed_at: a timed-out replay wait, or a failed one the write path marked applied,
    gives the commit's position and timeline (the session must count it, and forget it if a
    failover lost it); a lost or unknown write, an unmarked tracker failure and other
    exceptions give nothing."""
    timed_out = ReplicationTimeoutError(0x3000A38, 0.2, 0x3000000, "lax", timeline=1)
    assert committed_at(timed_out) == (0x3000A38, 1)
    assert committed_at(ReplicationTimeoutError(0x3000A38, 0.2, None, "lax")) == (0x3000A38, None)
    failed_wait = TrackerError("the LSN tracker is closed")
    assert committed_at(failed_wait) == (None, None)  # not (yet) about a write
    failed_wait.outcome, failed_wait.lsn, failed_wait.timeline = Outcome.APPLIED, 0x3000A38, 2
    assert committed_at(failed_wait) == (0x3000A38, 2)
    no_position = TrackerError("an ok reply without an LSN")
    no_position.outcome = Outcome.APPLIED
    assert committed_at(no_position) == (None, None)
    assert committed_at(LostInFailoverError(0x3000A38, 0x3000000, "lax")) == (None, None)
    assert committed_at(OutcomeUnknownError("r1")) == (None, None)
    assert committed_at(ValueError("x")) == (None, None)
