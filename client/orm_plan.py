"""Planning an ORM batch: a session's pending changes as one ordered list of Core statements.

Pure: :func:`plan_session` reads ``session.new``, ``session.dirty``, ``session.deleted``, the
objects' attribute histories and their mappers. It sends nothing, loads nothing and changes no
object; :mod:`writebus.client.orm` sends the statements and applies their results.

It follows the ORM's own flush rules where it writes (the same columns, defaults, version
counter, foreign keys copied along relationships) and refuses with
:class:`~writebus.client.orm_steps.OrmRefusedError` whatever one list of statements cannot do
correctly -- above all, a statement that needs a key the database generates for an earlier
statement of the same batch: a batch cannot feed one statement's ``RETURNING`` into the next.
docs/sqlalchemy.md lists every refusal and why.

Order: inserts (rows another pending row references first), updates, association rows
removed then added, then deletes (referencing rows first), each preceded by the statements that
detach what still references it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState, RelationshipDirection, Session
from sqlalchemy.orm.relationships import RelationshipProperty

from writebus.client.orm_steps import (
    Column,
    DefaultContext,
    OrmRefusedError,
    Refusal,
    RowWrite,
    Step,
    assemble,
    columns,
    describe,
    identity_key,
    is_sql,
    mapped_columns,
    match,
    objects,
    pairs,
    table_of,
    version_col,
)


class _Planner:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.rows: dict[InstanceState[Any], RowWrite] = {}
        self.deleted: set[InstanceState[Any]] = set()
        self.links: dict[Any, tuple[sa.Table, dict[Column, Any]]] = {}
        self.unlinks: dict[Any, tuple[sa.Table, dict[Column, Any]]] = {}
        self.before_delete: dict[InstanceState[Any], list[Step]] = {}
        self.orphans: list[tuple[InstanceState[Any], RelationshipProperty[Any]]] = []

    def run(self) -> tuple[list[Step], list[InstanceState[Any]]]:
        new = sorted((sa.inspect(o) for o in self.session.new), key=lambda s: s.insert_order)
        dirty: list[InstanceState[Any]] = [sa.inspect(o) for o in self.session.dirty]
        deleted: list[InstanceState[Any]] = [sa.inspect(o) for o in self.session.deleted]
        self.deleted = set(deleted)
        touched = [*new, *dirty, *deleted]
        for st in touched:
            table = st.mapper.persist_selectable
            if len(st.mapper.tables) != 1 or not isinstance(table, sa.Table):
                raise OrmRefusedError(st.obj(), Refusal.MULTI_TABLE, (
                    f"{st.mapper.class_.__name__} is mapped to {table}; only single-table "
                    "mappers (single-table inheritance included) are written"))
        for st in new:
            self._insert(st)
        for st in dirty:
            self._update(st)
        for st in deleted:
            row = self.rows[st] = RowWrite("delete", st, table_of(st), where=identity_key(st))
            self._version_where(row)
        for st in touched:
            self._relationships(st)
        self._check_orphans()
        for row in list(self.rows.values()):
            self._finish(row)
        self._check_row_switch()
        return self._steps(), [*new, *dirty, *(s for s in self.rows if s not in touched)]

    # -- rows -------------------------------------------------------------------------------

    def _insert(self, st: InstanceState[Any]) -> None:
        mapper = st.mapper
        row = self.rows[st] = RowWrite("insert", st, table_of(st))
        for col, key in mapped_columns(mapper):
            value = st.dict.get(key)
            if value is not None or (key in st.dict and col.type.should_evaluate_none):
                row.values[col] = value
                if is_sql(value):
                    row.server(col)
            elif col.server_default is not None or col is row.table.autoincrement_column:
                row.server(col)
            elif col.default is not None:
                if col.default.is_clause_element or col.default.is_sequence:
                    row.server(col)
                elif col.primary_key:  # now: rows that reference this one need it
                    row.values[col] = self._evaluate(st, row.values, col, col.default)
            elif not col.primary_key:
                row.values[col] = None  # as the ORM does: explicit NULL, not the DDL's default
        vcol = version_col(mapper)
        if vcol is not None:
            if mapper.version_id_generator is not False:
                row.values[vcol] = mapper.version_id_generator(None)  # type: ignore[misc]
            else:
                row.values.pop(vcol, None)
                row.server(vcol)

    def _update(self, st: InstanceState[Any]) -> None:
        row = self._update_row(st)
        for col, key in mapped_columns(st.mapper):
            hist = st.attrs[key].history
            if not hist.has_changes():
                continue
            if col.primary_key:
                raise OrmRefusedError(st.obj(), Refusal.KEY_CHANGE, (
                    f"its primary key {key!r} changed; the rows referencing it would have to "
                    "follow: write that with explicit statements"))
            row.values[col] = hist.added[0] if hist.added else None
            if is_sql(row.values[col]):
                row.server(col)

    def _update_row(self, st: InstanceState[Any]) -> RowWrite:
        row = self.rows.get(st)
        if row is None:
            if st.key is None or st.session is not self.session:
                raise OrmRefusedError(st.obj(), Refusal.NOT_IN_SESSION, (
                    "a relationship of an object being written points at it, but it is not "
                    "in this session: add it first"))
            row = self.rows[st] = RowWrite("update", st, table_of(st), where=identity_key(st))
        return row

    def _version_where(self, row: RowWrite) -> Any:
        vcol = version_col(row.state.mapper)
        if vcol is None:
            return None
        key = row.state.mapper.get_property_by_column(vcol).key
        old = row.where[vcol] = self._committed(row.state, key, required=True)
        return old

    def _committed(self, st: InstanceState[Any], key: str, *, required: bool) -> Any:
        hist = st.attrs[key].history
        if hist.deleted:
            return hist.deleted[0]
        if hist.unchanged:
            return hist.unchanged[0]
        if required:
            raise OrmRefusedError(st.obj(), Refusal.NOT_LOADED, (
                f"the committed value of {key!r} is not loaded (expired?); the write must match "
                "it: refresh the object, then change it"))
        return None

    def _evaluate(
        self, st: InstanceState[Any], values: dict[Column, Any], col: Column, default: Any
    ) -> Any:
        """A Python-side default or onupdate, evaluated on the row's values."""
        if default.is_scalar:
            return default.arg
        try:
            return default.arg(DefaultContext(values, col))
        except AttributeError as exc:
            raise OrmRefusedError(st.obj(), Refusal.DEFAULT, (
                f"the Python default of {col} reads the execution context ({exc}); only "
                "current_parameters / get_current_parameters() exist before the batch is sent"
            )) from exc

    def _python_defaults(
        self, st: InstanceState[Any], table: sa.Table, values: dict[Column, Any], *, update: bool
    ) -> None:
        """Fill in the Python-side defaults (onupdates) of ``table``'s columns that ``values``
        lacks, mapped or not: SQLAlchemy evaluates them while executing, which a compiled
        construct never does -- it would send NULL."""
        for col in table.columns:
            made = col.onupdate if update else col.default
            if col not in values and made is not None and (made.is_scalar or made.is_callable):
                values[col] = self._evaluate(st, values, col, made)

    def _finish(self, row: RowWrite) -> None:
        mapper = row.state.mapper
        if row.op == "insert":
            self._python_defaults(row.state, row.table, row.values, update=False)
            return
        if row.op != "update":
            return
        for col in list(row.synced):  # a relationship re-set the value it already had
            key = mapper.get_property_by_column(col).key
            hist = row.state.attrs[key].history
            if not hist.has_changes() and hist.unchanged and hist.unchanged[0] == row.values[col]:
                del row.values[col]
        if not row.values:
            del self.rows[row.state]
            return
        vcol = version_col(mapper)
        for col, _key in mapped_columns(mapper):
            if col in row.values or col is vcol:
                continue
            if col.onupdate is not None and col.onupdate.is_clause_element:
                row.server(col)  # Core renders it into the SET clause
            elif col.server_onupdate is not None:
                row.server(col)
        self._python_defaults(row.state, row.table, row.values, update=True)
        if vcol is not None:
            old = self._version_where(row)
            if vcol in row.values:
                pass  # set by the application: the ORM writes that value
            elif mapper.version_id_generator is not False:
                row.values[vcol] = mapper.version_id_generator(old)  # type: ignore[misc]
            else:
                row.server(vcol)

    def _check_row_switch(self) -> None:
        gone = {(s.mapper.base_mapper, s.identity) for s in self.deleted}
        for row in self.rows.values():
            if row.op != "insert":
                continue
            ident = tuple(row.values.get(c) for c in columns(row.state.mapper.primary_key))
            if (row.state.mapper.base_mapper, ident) in gone:
                raise OrmRefusedError(row.state.obj(), Refusal.ROW_SWITCH, (
                    f"it takes the key {ident!r} of an object deleted in the same batch; the "
                    "ORM would turn the pair into one UPDATE: update the existing object"))

    # -- relationships ----------------------------------------------------------------------

    def _relationships(self, st: InstanceState[Any]) -> None:
        for prop in st.mapper.relationships:
            if prop.viewonly:
                continue
            hist = st.attrs[prop.key].history
            if prop.post_update and hist.has_changes():
                raise OrmRefusedError(st.obj(), Refusal.POST_UPDATE, (
                    f"{prop} uses post_update (rows that reference each other): write the "
                    "cycle with explicit statements"))
            if st in self.deleted:
                self._on_delete(st, prop)
                continue
            if not hist.has_changes():
                continue
            sync = pairs(prop.synchronize_pairs)
            if prop.direction is RelationshipDirection.MANYTOONE:
                related = next((o for o in hist.added if o is not None), None)
                self._sync(related and sa.inspect(related), st, sync, prop)
            elif prop.direction is RelationshipDirection.ONETOMANY:
                for child in objects(hist.deleted):
                    if child not in self.deleted:
                        if prop.cascade.delete_orphan:
                            self.orphans.append((child, prop))
                        else:
                            self._sync(None, child, sync, prop, strong=False)
                for child in objects(hist.added):
                    self._sync(st, child, sync, prop)
            else:
                for child in objects(hist.deleted):
                    self._link(st, child, prop, self.unlinks)
                for child in objects(hist.added):
                    self._link(st, child, prop, self.links)

    def _sync(
        self,
        source: InstanceState[Any] | None,
        dest: InstanceState[Any],
        column_pairs: Iterable[tuple[Column, Column]],
        prop: RelationshipProperty[Any],
        *,
        strong: bool = True,
    ) -> None:
        """Copy the referenced key of ``source`` (None: NULL) into ``dest``'s foreign key."""
        if dest in self.deleted:
            return
        row = self.rows.get(dest) or self._update_row(dest)
        for ref, fk in column_pairs:
            value = None if source is None else self._source_value(source, ref, dest, prop)
            if value is None and fk.primary_key:
                raise OrmRefusedError(dest.obj(), Refusal.BLANK_KEY, (
                    f"{prop} would set its primary key column {fk} to NULL"))
            if strong or fk not in row.strong:
                row.values[fk] = value
                row.fetch = [c for c in row.fetch if c is not fk]
                row.synced.add(fk)
                if strong:
                    row.strong.add(fk)

    def _source_value(
        self, src: InstanceState[Any], col: Column, dest: InstanceState[Any],
        prop: RelationshipProperty[Any],
    ) -> Any:
        row = self.rows.get(src)
        key = src.mapper.get_property_by_column(col).key
        if row is not None and row.op == "insert":
            if col in row.values and not is_sql(row.values[col]):
                return row.values[col]
            raise OrmRefusedError(dest.obj(), Refusal.SERVER_KEY, (
                f"{prop} needs {col} of {describe(src.obj())}, which the database generates "
                "when that object is inserted; one batch cannot feed a statement's RETURNING "
                f"into the next: give {src.mapper.class_.__name__}.{key} a client-side value "
                "(say default=uuid.uuid4), or write the referenced object first"))
        if src.key is None:
            raise OrmRefusedError(dest.obj(), Refusal.NOT_IN_SESSION, (
                f"{prop} points at {describe(src.obj())}, which is in no session"))
        if key in src.dict:
            return src.dict[key]
        if col in src.mapper.primary_key:
            return dict(zip(src.mapper.primary_key, src.key[1], strict=True))[col]
        raise OrmRefusedError(dest.obj(), Refusal.NOT_LOADED, (
            f"{prop} needs {col} of {describe(src.obj())}, which is not loaded"))

    def _referenced(
        self, st: InstanceState[Any], prop: RelationshipProperty[Any]
    ) -> dict[Column, Any]:
        """The values ``prop``'s referencing columns take from ``st``, by column."""
        sync = pairs(prop.synchronize_pairs)
        return {fk: self._source_value(st, ref, st, prop) for ref, fk in sync}

    def _link(
        self, st: InstanceState[Any], child: InstanceState[Any], prop: RelationshipProperty[Any],
        into: dict[Any, tuple[sa.Table, dict[Column, Any]]],
    ) -> None:
        secondary = prop.secondary
        if not isinstance(secondary, sa.Table) or prop.secondary_synchronize_pairs is None:
            raise OrmRefusedError(st.obj(), Refusal.ASSOCIATION, (
                f"{prop} goes through {secondary}, not a table whose columns it fills"))
        if child in self.deleted and into is self.links:
            return
        row = self._referenced(st, prop)
        for ref, fk in pairs(prop.secondary_synchronize_pairs):
            row[fk] = self._source_value(child, ref, st, prop)
        if into is self.links:
            self._python_defaults(st, secondary, row, update=False)
        into[(secondary, tuple(sorted((c.name, repr(v)) for c, v in row.items())))] = (
            secondary, row)

    def _on_delete(self, st: InstanceState[Any], prop: RelationshipProperty[Any]) -> None:
        """What the ORM does to rows still referencing a deleted one: null their key
        (one-to-many) or delete the association rows (many-to-many), unless told the database
        does it (passive_deletes) or the delete cascades. The ORM loads a collection to null
        its rows one by one; a plan loads nothing, so an unloaded collection is detached by one
        set-based UPDATE instead -- the same rows -- unless its rows are versioned."""
        if prop.passive_deletes:
            return
        if prop.direction is RelationshipDirection.ONETOMANY and not prop.cascade.delete:
            if prop.key in st.dict:  # loaded: row by row, as the ORM does (versions checked)
                hist = st.attrs[prop.key].history
                for child in objects([*hist.unchanged, *hist.deleted]):
                    self._sync(None, child, pairs(prop.synchronize_pairs), prop, strong=False)
                return
            if prop.mapper.version_id_col is not None:
                raise OrmRefusedError(st.obj(), Refusal.NOT_LOADED, (
                    f"deleting it detaches the rows of {prop}, which have a version counter: "
                    "load the collection so each is matched and bumped, or use passive_deletes"))
            key = self._referenced(st, prop)
            if any(fk.primary_key for fk in key):
                raise OrmRefusedError(st.obj(), Refusal.BLANK_KEY, (
                    f"deleting it would set the primary key of the rows of {prop} to NULL; "
                    "delete them too (cascade='all, delete-orphan') or use passive_deletes"))
            table = next(iter(key)).table  # not loaded: one UPDATE for all its rows
            nulls: dict[Column, Any] = {fk: None for fk in key}
            self._python_defaults(st, table, nulls, update=True)
            stmt = sa.update(table).where(*match(key)).values(nulls)
            step = Step(stmt, detached=(prop.mapper, key))
        elif prop.direction is RelationshipDirection.MANYTOMANY:
            if not isinstance(prop.secondary, sa.Table):
                raise OrmRefusedError(st.obj(), Refusal.ASSOCIATION, (
                    f"{prop} goes through {prop.secondary}, not a table"))
            key = self._referenced(st, prop)
            step = Step(sa.delete(prop.secondary).where(*match(key)))
        else:
            return
        self.before_delete.setdefault(st, []).append(step)

    def _check_orphans(self) -> None:
        for child, prop in self.orphans:
            row = self.rows.get(child)
            fks = [fk for _ref, fk in pairs(prop.synchronize_pairs)]
            if row is None or any(fk not in row.strong or row.values[fk] is None for fk in fks):
                raise OrmRefusedError(child.obj(), Refusal.ORPHAN, (
                    f"it was removed from {prop} (delete-orphan) but not deleted: call "
                    "session.delete() on it, or give it another parent"))

    # -- order ------------------------------------------------------------------------------

    def _steps(self) -> list[Step]:
        return assemble(
            list(self.rows.values()),
            committed=self._committed_values,
            links=list(self.links.values()),
            unlinks=list(self.unlinks.values()),
            before_delete=self.before_delete,
        )

    def _committed_values(self, row: RowWrite) -> dict[Column, Any]:
        out = dict(row.where)
        for col, key in mapped_columns(row.state.mapper):
            out.setdefault(col, self._committed(row.state, key, required=False))
        return out


def plan_session(session: Session) -> tuple[list[Step], list[InstanceState[Any]]]:
    """The statements that write ``session``'s pending changes, and every object they settle
    (written, or holding relationship changes those statements carry). Pure."""
    return _Planner(session).run()
