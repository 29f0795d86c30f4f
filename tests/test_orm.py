"""The ORM helper on real servers: a session's pending changes written as one bus batch from lax.

Objects created, changed and deleted in a session on the replica go out as one transaction on
the primary; read back at once with the ORM from the local replica, they are there with their
generated keys and server defaults, and the session's own objects carry the same values and are
clean. A row changed meanwhile rolls the whole batch back; what cannot be written correctly is
refused before anything is sent. Every Python block of docs/sqlalchemy.md runs here too. The
planning alone is tested without servers in tests/unit/test_orm_plan.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import re
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import nats
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event, inspect
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.support.docblocks import python_blocks, run_blocks
from tests.support.stack import REPO, primary_rows, settings_for
from writebus import Database, Outcome, SyncDatabase, WriteRejectedError
from writebus.client.errors import (
    IdempotencyKeyReusedError,
    LostInFailoverError,
    OutcomeUnknownError,
    TrackerError,
)
from writebus.client.orm import (
    OrmRefusedError,
    Refusal,
    StaleObjectError,
    write_session,
    write_session_sync,
)


class Mood(enum.Enum):
    sad = "sad"
    ok = "ok"


def sa_url(url: str) -> str:
    """A libpq URL as SQLAlchemy's psycopg (3) URL."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def declare(suffix: str) -> SimpleNamespace:
    """Fresh mapped classes on tables named with ``suffix``."""

    class Base(DeclarativeBase):
        pass

    book_tags = sa.Table(
        f"orm_book_tag_{suffix}",
        Base.metadata,
        sa.Column("book_id", sa.ForeignKey(f"orm_book_{suffix}.id"), primary_key=True),
        sa.Column("tag", sa.ForeignKey(f"orm_tag_{suffix}.name"), primary_key=True),
    )

    class Author(Base):
        __tablename__ = f"orm_author_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        name: Mapped[str] = mapped_column(unique=True)
        joined: Mapped[datetime.datetime] = mapped_column(
            sa.DateTime(timezone=True), server_default=sa.func.now()
        )
        books: Mapped[list[Book]] = relationship("Book", back_populates="author")
        notes: Mapped[list[Note]] = relationship("Note")

    class Note(Base):
        __tablename__ = f"orm_note_{suffix}"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
        body: Mapped[str]
        author_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey(Author.id))

    class Tag(Base):
        __tablename__ = f"orm_tag_{suffix}"
        name: Mapped[str] = mapped_column(primary_key=True)

    class Book(Base):
        __tablename__ = f"orm_book_{suffix}"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
        title: Mapped[str]
        price: Mapped[Decimal] = mapped_column(sa.Numeric(8, 2), server_default="9.50")
        stock: Mapped[int] = mapped_column(default=0)
        touched: Mapped[datetime.datetime | None] = mapped_column(
            sa.DateTime(timezone=True), onupdate=sa.func.now()
        )
        version: Mapped[int] = mapped_column()
        author_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey(Author.id))
        author: Mapped[Author | None] = relationship("Author", back_populates="books")
        tags: Mapped[list[Tag]] = relationship("Tag", secondary=book_tags, order_by="Tag.name")
        reviews: Mapped[list[Review]] = relationship(
            "Review", back_populates="book", cascade="all, delete-orphan"
        )
        __mapper_args__ = {"version_id_col": version}

    class Review(Base):
        __tablename__ = f"orm_review_{suffix}"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
        body: Mapped[str]
        book_id: Mapped[int] = mapped_column(sa.ForeignKey(Book.id))
        book: Mapped[Book] = relationship("Book", back_populates="reviews")

    class Sample(Base):
        """A server default of every type the wire carries, and two it does not."""

        __tablename__ = f"orm_sample_{suffix}"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
        token: Mapped[uuid.UUID] = mapped_column(server_default=sa.text("gen_random_uuid()"))
        amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 3), server_default="1.250")
        ratio: Mapped[float] = mapped_column(sa.Float, server_default="0.5")
        at: Mapped[datetime.datetime] = mapped_column(
            sa.DateTime(timezone=True), server_default=sa.func.now()
        )
        local: Mapped[datetime.datetime] = mapped_column(
            server_default=sa.text("timestamp '2026-01-02 03:04:05.5'")
        )
        day: Mapped[datetime.date] = mapped_column(server_default=sa.text("date '2026-01-02'"))
        clock: Mapped[datetime.time] = mapped_column(server_default=sa.text("time '03:04:05.25'"))
        span: Mapped[datetime.timedelta] = mapped_column(
            server_default=sa.text("interval '1 day 02:03:04.5'")
        )
        flag: Mapped[bool] = mapped_column(server_default=sa.true())
        doc: Mapped[dict[str, Any]] = mapped_column(
            JSONB, server_default=sa.text("""'{"a": [1, 2.5, null]}'::jsonb""")
        )
        mood: Mapped[Mood] = mapped_column(sa.Enum(Mood, name=f"mood_{suffix}"),
                                           server_default="ok")
        blob: Mapped[bytes] = mapped_column(server_default=sa.text("'\\x0001ff'::bytea"))
        addr: Mapped[str] = mapped_column(INET, server_default="10.0.0.1")
        nums: Mapped[list[int]] = mapped_column(ARRAY(sa.Integer), server_default="{1,2}")

    return SimpleNamespace(
        Base=Base, Author=Author, Book=Book, Tag=Tag, Review=Review, Note=Note, Sample=Sample,
        tags=book_tags,
    )


@pytest.fixture
def orm(stack: Any) -> Iterator[SimpleNamespace]:
    """Mapped classes on fresh tables (created on the primary, replayed by the replica), and
    an engine on the replica for the ORM's reads."""
    m = declare(uuid.uuid4().hex[:8])
    primary = sa.create_engine(sa_url(stack.primary.url))
    m.Base.metadata.create_all(primary)
    primary.dispose()
    stack.wait_replica_caught_up(10)
    m.replica = sa.create_engine(sa_url(settings_for(stack, "lax").database_url))
    yield m
    m.replica.dispose()


@pytest.fixture
async def db(lax_db: Database, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    """The lax Database, counting the batches it sends (``db.sent``) and recording the
    timelines its replay waits were given (``db.waited_on``)."""
    sent: list[Any] = []
    waited_on: list[int | None] = []
    batch, wait_for_lsn = lax_db.batch, lax_db.wait_for_lsn

    async def counting(statements: Any, **options: Any) -> Any:
        sent.append(statements)
        return await batch(statements, **options)

    async def waiting(lsn: int, timeout: float | None = None, timeline: int | None = None) -> int:
        waited_on.append(timeline)
        return await wait_for_lsn(lsn, timeout, timeline)

    monkeypatch.setattr(lax_db, "batch", counting)
    monkeypatch.setattr(lax_db, "wait_for_lsn", waiting)
    lax_db.sent = sent  # type: ignore[attr-defined]
    lax_db.waited_on = waited_on  # type: ignore[attr-defined]
    yield lax_db


def session(orm: SimpleNamespace) -> Session:
    """A session on the replica. No autoflush: a flush would write to the replica."""
    return Session(orm.replica, autoflush=False)


def clean(s: Session, *objs: object) -> bool:
    """The objects are persistent in ``s`` with nothing left to flush."""
    return not (s.new or s.dirty or s.deleted) and all(
        inspect(o).persistent and not s.is_modified(o) for o in objs
    )


async def seed(db: Database, orm: SimpleNamespace, *titles: str) -> list[int]:
    """Books written through the helper; their ids."""
    with session(orm) as s:
        books = [orm.Book(title=t) for t in titles]
        s.add_all(books)
        await write_session(db, s)
        return [b.id for b in books]


async def test_one_batch_then_read_your_writes(orm: SimpleNamespace, db: Any) -> None:
    """Inserts (a client-assigned key, a server-generated one), an update and a delete go out
    as one batch; the session's objects then carry the generated keys and server defaults and
    are clean, and the ORM reads the same rows from the replica at once."""
    old_id, doomed_id = await seed(db, orm, "old", "doomed")
    with session(orm) as s:
        old, doomed = s.get(orm.Book, old_id), s.get(orm.Book, doomed_id)
        assert old is not None and doomed is not None and old.touched is None
        ann = orm.Author(name="ann")
        new = orm.Book(title="new", author=ann)
        s.add(new)
        old.title, old.author, old.stock = "renamed", ann, orm.Book.stock + 5
        s.delete(doomed)
        result = await write_session(db, s)
        assert result is not None and result.via_bus and result.replicated
        # The replay wait knows the write's timeline: a failover that lost it would say so.
        assert result.timeline is not None and db.waited_on[-1] == result.timeline
        # author, book, update, the doomed book's association rows, the doomed book
        assert len(db.sent) == 2 and len(result.statements) == 5
        # The session's objects: keys, defaults, versions; persistent and clean.
        assert isinstance(new.id, int) and new.author_id == ann.id and new.version == 1
        assert new.price == Decimal("9.50") and new.stock == 0
        assert ann.joined.tzinfo is not None
        assert old.version == 2 and old.stock == 5 and old.touched is not None
        assert clean(s, ann, new, old) and inspect(doomed).detached
        statements: list[str] = []
        event.listen(orm.replica, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))
        s.flush()
        assert statements == []  # nothing left to write
        assert new.reviews == [] and statements  # never touched: lazy-loads from the replica
        snapshot = {k: getattr(new, k) for k in ("id", "title", "price", "version", "author_id")}
        joined, touched = ann.joined, old.touched
        s.rollback()  # ends the session's read transaction: the objects only expire
        assert inspect(new).persistent and inspect(new).expired and new.title == "new"
    with session(orm) as fresh:  # read-your-writes on the replica, with the ORM
        again = fresh.get(orm.Book, snapshot["id"])
        assert again is not None and again.author is not None
        assert {k: getattr(again, k) for k in snapshot} == snapshot
        assert again.author.name == "ann" and again.author.joined == joined
        renamed = fresh.get(orm.Book, old_id)
        assert renamed is not None and renamed.author is not None
        assert (renamed.title, renamed.version, renamed.stock) == ("renamed", 2, 5)
        assert renamed.author.name == "ann" and renamed.touched == touched
        assert fresh.get(orm.Book, doomed_id) is None


async def test_server_defaults_come_back_as_the_orm_loads_them(
    orm: SimpleNamespace, db: Any
) -> None:
    """Every server default the wire carries is set on the new object with the value and the
    type the ORM loads from the replica; an inet and an array (outside the wire's contract)
    are left expired and load from the replica on access."""
    with session(orm) as s:
        sample = orm.Sample()
        s.add(sample)
        await write_session(db, s)
        assert inspect(sample).unloaded == {"addr", "nums"}
        mine = {k: getattr(sample, k) for k in inspect(sample).dict if not k.startswith("_")}
        late = {"addr": sample.addr, "nums": sample.nums}  # loaded now, from the replica
    with session(orm) as fresh:
        loaded = fresh.get(orm.Sample, mine["id"])
        assert loaded is not None
        for key, value in mine.items():
            theirs = getattr(loaded, key)
            assert value == theirs and type(value) is type(theirs), key
        assert late == {"addr": loaded.addr, "nums": [1, 2]}
    assert mine["mood"] is Mood.ok and mine["span"] == datetime.timedelta(
        days=1, hours=2, minutes=3, seconds=4.5
    )


@pytest.mark.parametrize("meanwhile", ["changed", "deleted"])
async def test_a_stale_row_rolls_the_whole_batch_back(
    orm: SimpleNamespace, db: Any, stack: Any, meanwhile: str
) -> None:
    """A row changed (its version moved) or deleted since it was loaded: the batch's UPDATE
    matches nothing, the whole batch -- an insert included -- rolls back, and StaleObjectError
    names the object; the session keeps its changes to retry."""
    (book_id,) = await seed(db, orm, "v1")
    with session(orm) as s:
        book = s.get(orm.Book, book_id)
        assert book is not None and book.version == 1
        with session(orm) as other:
            theirs = other.get(orm.Book, book_id)
            assert theirs is not None
            if meanwhile == "changed":
                theirs.title = "theirs"
            else:
                other.delete(theirs)
            await write_session(db, other)
        book.title = "mine"
        s.add(orm.Author(name="bystander"))
        with pytest.raises(StaleObjectError) as info:
            await write_session(db, s)
        assert s.dirty and s.new  # nothing settled: refresh and retry
    err = info.value
    assert err.obj is book and isinstance(err, WriteRejectedError)
    assert isinstance(err, sa.orm.exc.StaleDataError) and err.outcome is Outcome.NOT_APPLIED
    assert err.statement_index == 1 and "UPDATE" in str(err)
    table = orm.Author.__tablename__
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]
    rows = primary_rows(stack, f"SELECT title, version FROM {orm.Book.__tablename__}")
    assert rows == ([("theirs", 2)] if meanwhile == "changed" else [])


async def test_relationships_association_rows_and_deleted_parents(
    orm: SimpleNamespace, db: Any
) -> None:
    """Keys follow relationships; many-to-many rows are added and removed with the
    collections. Deleting a parent nulls its children's key -- row by row for a loaded
    collection (versions matched and bumped), by one UPDATE for an unloaded one (the session's
    children expire it) -- and a cascaded delete takes reviews and association rows along."""
    with session(orm) as s:
        ann = orm.Author(name="ann")
        b1, b2 = orm.Book(title="b1", author=ann), orm.Book(title="b2", author=ann)
        x, y = orm.Tag(name="x"), orm.Tag(name="y")
        ann.notes.append(orm.Note(body="n"))
        s.add_all([b1, b2, x, y])
        await write_session(db, s)
        b1.tags.extend([x, y])
        b2.tags.append(x)
        b2.reviews.append(orm.Review(body="r"))
        await write_session(db, s)
        assert clean(s, b1, b2) and b2.reviews[0].book_id == b2.id
        b1.tags.remove(y)
        await write_session(db, s)
        ids = (ann.id, b1.id, b2.id, ann.notes[0].id)
    ann_id, b1_id, b2_id, note_id = ids
    with session(orm) as s:  # fresh: Author.notes is not loaded, Author.books is
        ann = s.get(orm.Author, ann_id)
        note = s.get(orm.Note, note_id)
        assert ann is not None and note is not None and len(ann.books) == 2
        b1, b2 = sorted(ann.books, key=lambda b: b.id)
        s.delete(b2)  # cascades to its review; its association row goes too
        s.delete(ann)
        await write_session(db, s)
        assert clean(s, b1, note) and inspect(ann).detached and inspect(b2).detached
        assert (b1.author_id, b1.version) == (None, 2)
        assert "author_id" in inspect(note).unloaded and note.author_id is None
    with session(orm) as fresh:
        book = fresh.get(orm.Book, b1_id)
        assert book is not None and [t.name for t in book.tags] == ["x"]
        assert (book.author_id, book.version) == (None, 2)
        assert fresh.get(orm.Book, b2_id) is None and fresh.get(orm.Author, ann_id) is None
        assert fresh.scalars(sa.select(orm.Review)).all() == []
        assert fresh.execute(sa.select(orm.tags.c.book_id)).all() == [(b1_id,)]


@pytest.mark.parametrize(
    "case",
    ["server_key", "key_change", "row_switch", "orphan", "not_loaded", "m2m_server_key"],
)
async def test_refusals_raise_before_anything_is_sent(
    orm: SimpleNamespace, db: Any, stack: Any, case: str
) -> None:
    """What one batch cannot write correctly raises OrmRefusedError naming the object and the
    reason; no batch is sent and the primary is unchanged."""
    (book_id,) = await seed(db, orm, "kept")
    db.sent.clear()
    with session(orm) as s:
        book = s.get(orm.Book, book_id)
        assert book is not None
        if case == "server_key":  # the new review needs the new book's bigserial id
            culprit = orm.Review(body="great", book=orm.Book(title="new"))
        elif case == "key_change":
            culprit = book
            book.id = book_id + 1000
        elif case == "row_switch":
            s.delete(book)
            culprit = orm.Book(id=book_id, title="again")
        elif case == "orphan":
            culprit = orm.Review(body="meh", book=book)
            s.add(culprit)
            await write_session(db, s)
            db.sent.clear()
            book.reviews.remove(culprit)
        elif case == "not_loaded":
            culprit = book
            s.expire(book)
            book.title = "blind"  # the version it must match is no longer known
        else:  # the association row needs the new book's bigserial id
            culprit = orm.Book(title="nb")
            culprit.tags.append(orm.Tag(name="u"))
        s.add(culprit)
        with pytest.raises(OrmRefusedError) as info:
            await write_session(db, s)
    assert info.value.obj is culprit and db.sent == []
    expected = {"m2m_server_key": Refusal.SERVER_KEY}.get(case) or Refusal(case)
    assert info.value.reason is expected and info.value.outcome is Outcome.NOT_APPLIED
    table = orm.Book.__tablename__
    assert primary_rows(stack, f"SELECT id, title, version FROM {table}") == [(book_id, "kept", 1)]


async def test_a_failed_replay_wait_after_the_batch_says_what_became_of_the_write(
    orm: SimpleNamespace, stack: Any, buses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch committed and only the replay wait failed: the error says so, as a plain
    write's does -- applied at the batch's position when the tracker is gone (the session is
    settled); unknown, with the request id to send it again under, when a failover left the
    write behind -- and then the session keeps its changes, so that writing it again under
    that id settles it (here the commit was not really lost: the resend is answered from its
    record). (The first had no outcome; the second asked for a resend by an id the caller
    never saw, of a session already settled, so nothing would have been sent.)"""
    nc = await nats.connect(stack.nats_url("lax"))  # a tracker of its own, to close
    try:
        async with Database(settings_for(stack, "lax"), nats=nc) as own:
            assert own.tracker is not None
            (old_id,) = await seed(own, orm, "before the loss")
            await own.tracker.close()
            with session(orm) as s:
                s.add(orm.Book(title="untracked"))
                with pytest.raises(TrackerError) as tracked:
                    await write_session(own, s)
            assert tracked.value.outcome is Outcome.APPLIED and tracked.value.lsn is not None

            async def lost(lsn: int, timeout: float | None = None, timeline: int | None = None) -> int:
                raise LostInFailoverError(lsn, lsn - 1, "lax")

            monkeypatch.setattr(own, "wait_for_lsn", lost)
            with session(orm) as s:
                book = orm.Book(title="lost")
                s.add(book)
                old = s.get(orm.Book, old_id)
                assert old is not None
                old.title = "renamed before the loss"  # its version id goes 1 -> 2
                with pytest.raises(OutcomeUnknownError) as unknown:
                    await write_session(own, s)
                assert s.new and book.id is None and old.version == 1  # not settled
                again = await write_session(own, s, request_id=unknown.value.request_id,
                                            await_replication=False)  # fmt: skip
                assert again is not None and again.duplicate
                assert clean(s, book, old) and isinstance(book.id, int) and old.version == 2
            with session(orm) as s:
                # A Python-side uuid4 key is drawn again when the session is planned again:
                # another request, which the id's record refuses -- never applied twice.
                s.add(orm.Author(name="lost"))
                with pytest.raises(OutcomeUnknownError) as drawn:
                    await write_session(own, s)
                with pytest.raises(IdempotencyKeyReusedError) as refused:
                    await write_session(own, s, request_id=drawn.value.request_id,
                                        await_replication=False)  # fmt: skip
                assert refused.value.outcome is Outcome.NOT_APPLIED
    finally:
        await nc.close()
    assert isinstance(unknown.value.last_error, LostInFailoverError)
    rid = unknown.value.request_id
    assert rid and rid in str(unknown.value)
    assert primary_rows(stack, "SELECT id FROM writebus.applied WHERE id = %s", [rid]) == [(rid,)]
    authors = primary_rows(stack, f"SELECT count(*) FROM {orm.Author.__tablename__} "
                                  "WHERE name = 'lost'")  # fmt: skip
    assert authors == [(1,)]


async def test_a_batch_reply_without_a_position_settles_and_says_applied(
    orm: SimpleNamespace, stack: Any, buses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that says the batch committed but carries no LSN (an older worker answering a
    repeat) cannot be waited for: write_session settles the session and raises the applied
    TrackerError that Database.batch raises -- it returned as if done, though asked to wait
    and having waited for nothing."""
    async with Database(settings_for(stack, "lax")) as own:
        real = own.batch

        async def without_position(*args: Any, **kwargs: Any) -> Any:
            return dataclasses.replace(await real(*args, **kwargs), lsn=None)

        monkeypatch.setattr(own, "batch", without_position)
        with session(orm) as s:
            book = orm.Book(title="no position")
            s.add(book)
            with pytest.raises(TrackerError) as info:
                await write_session(own, s)
            assert info.value.outcome is Outcome.APPLIED and "no LSN" in str(info.value)
            assert clean(s, book) and isinstance(book.id, int)


async def test_write_session_sync(orm: SimpleNamespace, stack: Any, buses: Any) -> None:
    """The SyncDatabase writes a session the same way: keys set, clean, readable at once."""

    def run() -> tuple[int, str]:
        with SyncDatabase(settings_for(stack, "lax")) as sdb, session(orm) as s:
            book = orm.Book(title="sync")
            s.add(book)
            result = write_session_sync(sdb, s)
            assert result is not None and result.replicated and clean(s, book)
            book.title = "sync-2"
            write_session_sync(sdb, s)
            assert book.version == 2 and clean(s, book)
            with session(orm) as fresh:
                again = fresh.get(orm.Book, book.id)
                assert again is not None
                return again.version, again.title

    assert await asyncio.to_thread(run) == (2, "sync-2")


async def test_nothing_to_write_sends_nothing(orm: SimpleNamespace, db: Any) -> None:
    """A session without changes sends no batch and returns None."""
    (book_id,) = await seed(db, orm, "same")
    db.sent.clear()
    with session(orm) as s:
        book = s.get(orm.Book, book_id)
        assert book is not None
        book.title = "same"  # set, but no net change
        assert await write_session(db, s) is None
        assert db.sent == [] and clean(s, book)


DOC = REPO / "docs" / "sqlalchemy.md"


async def test_docs_sqlalchemy_md_runs(
    stack: Any, buses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Python block of docs/sqlalchemy.md runs, in order, as one script in lax: blocks
    with top-level await on the event loop, the others in a thread, as a sync app runs."""
    blocks = python_blocks(DOC)
    assert len(blocks) >= 10
    for key, value in stack.env("lax").items():
        monkeypatch.setenv(key, value)
    tables = sorted(set(re.findall(r'"(doc_\w+)"', DOC.read_text(encoding="utf-8"))))
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:  # a rerun starts clean
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(tables)} CASCADE")
    module = types.ModuleType("docs_sqlalchemy")  # the ORM resolves names in a real module
    try:
        await run_blocks(DOC, blocks, module)
    finally:
        if isinstance(module.__dict__.get("db"), Database):
            await module.__dict__["db"].close()
    assert module.__dict__["again"].duplicate
