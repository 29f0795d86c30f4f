"""The service's log output (:mod:`writebus.bus.log`) and the library's messages
(:mod:`writebus.client.log`), on an in-memory stream."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from writebus.bus.log import configure_logging
from writebus.client.log import get_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging sets up the whole process: put the test run's set-up back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses,
             logging.logMultiprocessing)  # fmt: skip
    yield
    root.handlers, root.level = handlers, level
    (logging._srcfile, logging.logThreads, logging.logProcesses,
     logging.logMultiprocessing) = flags  # fmt: skip


@contextmanager
def kept(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records that reach the logger ``name`` inside the block, kept by its own handler."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_json_lines_keep_fields_unicode_and_odd_values(restore_logging: None) -> None:
    """One JSON object per line (``json.dumps``' spelling, which people grep for): the event's
    fields as keys, non-ASCII text escaped, a value JSON has no type for as its repr, an
    exception as text; the process's caller, thread and process lookups are off."""
    out = io.StringIO()
    configure_logging(fmt="json", level="info", stream=out)
    log = get_logger("writebus.test.log")

    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    log.info("request", region="São Paulo", queue_ms=0.125, odd=Odd(), lsn=None)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", n=1)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "request" and first["region"] == "São Paulo"
    assert first["queue_ms"] == 0.125 and first["lsn"] is None and first["odd"] == "<odd>"
    assert first["logger"] == "writebus.test.log" and first["level"] == "info"
    assert '"event": "request"' in out.getvalue() and "S\\u00e3o" in out.getvalue()
    assert second["event"] == "failed" and "ValueError: boom" in second["exception"]
    assert logging._srcfile is None and not logging.logThreads


def test_messages_quote_values_with_spaces_quotes_or_newlines() -> None:
    """Under a plain logging set-up a record's message is ``event key=value``; a value that
    is empty or holds a space, ``=``, ``"`` or a newline is quoted."""
    logging.getLogger("writebus.test.quote").setLevel(logging.INFO)
    with kept("writebus.test.quote") as records:
        get_logger("writebus.test.quote").info(
            "e", a="plain", b="two words", c="", d="k=v", e='say "hi"', f="a\nb", g=3
        )
    assert records[0].getMessage() == (
        "e a=plain b='two words' c='' d='k=v' e='say \"hi\"' f='a\\nb' g=3"
    )


def test_other_libraries_records_become_events_with_their_own_time(
    restore_logging: None,
) -> None:
    """A record from outside writebus (psycopg_pool, nats-py...) is one JSON line too: its
    message (arguments merged) as the event, its logger and level; the time stamp is
    when the record was made, in UTC, as structlog's ISO stamp spells it."""
    out = io.StringIO()
    configure_logging(fmt="json", level="info", stream=out)
    with kept("someone.else") as records:
        logging.getLogger("someone.else").warning("pool %s is %d%% full", "main", 90)
    line = json.loads(out.getvalue())
    assert line["event"] == "pool main is 90% full"
    assert line["logger"] == "someone.else" and line["level"] == "warning"
    made = datetime.datetime.fromtimestamp(records[0].created, datetime.UTC)
    assert line["timestamp"] == made.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert list(line)[-3:] == ["logger", "level", "timestamp"]


def test_console_lines_carry_the_event_its_fields_and_the_exception(
    restore_logging: None,
) -> None:
    """The console format (people at a terminal) renders the same fields."""
    out = io.StringIO()
    configure_logging(fmt="console", level="info", stream=out)
    log = get_logger("writebus.test.console")
    try:
        raise KeyError("gone")
    except KeyError:
        log.exception("lost", region="lax")
    text = out.getvalue()
    assert "lost" in text and "region=lax" in text and "writebus.test.console" in text
    assert "KeyError: 'gone'" in text


def test_the_message_is_made_only_when_asked_for(restore_logging: None) -> None:
    """The service's JSON lines are made from the fields: the ``event key=value`` message is
    never rendered for them (it cost a sixth of a request log line); a handler that asks
    gets it, made once."""
    out = io.StringIO()
    configure_logging(fmt="json", level="info", stream=out)
    made: list[int] = []

    class Counted:
        def __str__(self) -> str:
            made.append(1)
            return "counted"

        def __repr__(self) -> str:
            return "<counted>"

    with kept("writebus.test.lazy") as records:
        get_logger("writebus.test.lazy").info("request", value=Counted(), n=2)
    assert json.loads(out.getvalue())["value"] == "<counted>"
    assert made == []
    assert records[0].getMessage() == "request value=counted n=2"
    assert str(records[0].msg) == "request value=counted n=2"
    assert made == [1]


class _CountingStream(io.StringIO):
    """A stream that counts its flushes (each would be a write to a pipe or file)."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_lines_in_one_loop_step_are_flushed_once(restore_logging: None) -> None:
    """Inside an event loop the lines written in one step go out in one flush, at the end of
    the step; outside a loop every line is flushed as it is written, even when a flush was
    left due on a loop that has closed."""
    out = _CountingStream()
    configure_logging(fmt="json", level="info", stream=out)
    log = get_logger("writebus.test.flush")

    async def step() -> tuple[int, int]:
        for n in range(5):
            log.info("request", n=n)
        before = out.flushes
        await asyncio.sleep(0)
        return before, out.flushes

    assert asyncio.run(step()) == (0, 1)
    assert len(out.getvalue().splitlines()) == 5

    loop = asyncio.new_event_loop()
    loop.call_soon(log.info, "late")  # its flush is due on a loop that will never run again
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    flushed = out.flushes
    log.info("after", n=1)
    log.info("after", n=2)
    assert out.flushes == flushed + 2
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()][-3:] == [
        "late", "after", "after"
    ]  # fmt: skip


def test_a_due_flush_on_a_stream_closed_since_is_dropped_quietly(
    restore_logging: None, tmp_path: Path
) -> None:
    """A stream closed between a line and the end of its step (a reader gone, a test's
    stream) does not surface as an error in the event loop: as ``logging.shutdown`` does,
    the flush is dropped."""
    out = (tmp_path / "log").open("w")
    configure_logging(fmt="json", level="info", stream=out)
    log = get_logger("writebus.test.closed")
    errors: list[dict[str, object]] = []

    async def step() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        log.info("request", n=1)
        out.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(step())
    assert errors == []
