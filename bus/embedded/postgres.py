"""A local Postgres server (primary or streaming replica) for the embedded stack.

Postgres refuses to run as root, so when this process is root every Postgres program runs as an
unprivileged user (see :func:`default_run_as`) and the data directory is handed to that user.
The server listens on 127.0.0.1 only, with no unix socket, trusts every local connection (this is
a development stack) and logs to ``postgres.log`` in its data directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import psycopg

from writebus.bus.embedded.child import ChildProcess
from writebus.bus.embedded.environ import PINNED
from writebus.bus.embedded.errors import (
    BinaryNotFound,
    CommandError,
    EmbeddedError,
    ServerStartError,
    WaitTimeout,
)
from writebus.bus.embedded.pgbin import find_pg_bindir, has_postgres
from writebus.bus.embedded.pgconf import (
    SettingValue,
    default_run_as,
    format_setting,
    managed_settings,
    postmaster_pid,
    quote_setting,
)
from writebus.bus.embedded.procs import is_alive, live_group_members
from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.postgres")

#: The database superuser every embedded server is initialised with.
SUPERUSER: Final = "postgres"
#: Sentinel for ``run_as``: choose with :func:`default_run_as`.
AUTO: Final = "auto"
#: ``stop(mode=...)`` to the signal the postmaster expects for it.
STOP_SIGNALS: Final[Mapping[str, signal.Signals]] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
#: Settings file included from ``postgresql.conf``; rewritten for a replica after its base backup.
MANAGED_CONF: Final = "writebus.conf"
LOG_FILE: Final = "postgres.log"


class PostgresServer(ChildProcess):
    """One Postgres server process with its own data directory.

    Build it, then :meth:`init_primary` or :meth:`init_replica` once, then :meth:`start`.
    ``run_as`` names the OS user the programs run as (``"auto"``: :func:`default_run_as`; ``None``:
    this process's user). ``fsync=False`` trades crash safety for speed (initdb ``--no-sync``,
    ``fsync = off``); ``settings`` adds or overrides ``postgresql.conf`` parameters.

    A data directory initialised by an earlier run is adopted with :meth:`reuse` instead.
    """

    # What the watchdog sends if we die first: a fast shutdown (abort transactions, checkpoint),
    # so the next run on this data directory starts without crash recovery.
    stop_signal: ClassVar[signal.Signals] = signal.SIGINT
    stop_grace: ClassVar[float] = 10.0

    def __init__(
        self,
        *,
        name: str,
        datadir: str | os.PathLike[str],
        port: int,
        bindir: str | os.PathLike[str] | None = None,
        run_as: str | None = AUTO,
        fsync: bool = False,
        settings: Mapping[str, SettingValue] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.datadir = Path(datadir).absolute()
        self.port = port
        self.host = host
        self.bindir = Path(bindir) if bindir is not None else find_pg_bindir()
        if not has_postgres(self.bindir):
            raise BinaryNotFound("postgres", searched=[str(self.bindir)])
        self.run_as = default_run_as() if run_as == AUTO else run_as
        self.fsync = fsync
        self.settings: dict[str, SettingValue] = dict(settings or {})
        self.upstream: tuple[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        if self.run_as is None and os.geteuid() == 0:
            raise EmbeddedError(
                "Postgres refuses to run as root: pass run_as=<an unprivileged user>"
            )

    def __repr__(self) -> str:
        role = "replica" if self.upstream else "primary"
        state = "running" if self.is_running else "stopped"
        return f"<PostgresServer {self.name} {role} port={self.port} {state}>"

    # --- properties -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Connection URL of the superuser on the ``postgres`` database (and ``PINNED``)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres?{PINNED}"

    @property
    def log_path(self) -> Path:
        """The server's log file (its stderr)."""
        return self.datadir / LOG_FILE

    @property
    def is_initialised(self) -> bool:
        """True when the data directory holds a cluster that :meth:`init_primary` or
        :meth:`init_replica` finished setting up (the managed settings file is written last)."""
        return (self.datadir / "PG_VERSION").is_file() and (self.datadir / MANAGED_CONF).is_file()

    @property
    def has_data(self) -> bool:
        """True when the data directory exists and is not empty (initialised or not)."""
        return self.datadir.is_dir() and any(self.datadir.iterdir())

    # --- initialisation ---------------------------------------------------------------------

    def init_primary(self) -> None:
        """Create a fresh cluster with ``initdb`` and configure it as a replication source."""
        self._prepare_datadir()
        started = time.monotonic()
        command = [
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]  # fmt: skip
        if not self.fsync:
            command.append("--no-sync")
        self._run(command)
        (self.datadir / "pg_hba.conf").write_text(
            "# written by bus.embedded: trust everything local, including replication\n"
            "local all         all                trust\n"
            "local replication all                trust\n"
            "host  all         all 127.0.0.1/32   trust\n"
            "host  replication all 127.0.0.1/32   trust\n"
        )
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists = '{MANAGED_CONF}'\n")
        self._write_managed_conf()
        self.upstream = None
        log.info(
            "embedded.pg.initdb", server=self.name, seconds=round(time.monotonic() - started, 3)
        )

    def init_replica(self, source_host: str, source_port: int) -> None:
        """Create a streaming replica of the server at ``source_host:source_port``.

        Runs ``pg_basebackup -R -X stream``; the source may be a proxy in front of the primary,
        and the replica keeps streaming through that same address. The replica identifies itself
        with ``application_name=<name>`` and sends hot-standby feedback.
        """
        self._prepare_datadir()
        started = time.monotonic()
        command = [
            str(self.bindir / "pg_basebackup"),
            "-h", source_host,
            "-p", str(source_port),
            "-U", SUPERUSER,
            "-D", str(self.datadir),
            "-R",
            "-X", "stream",
            "--checkpoint=fast",
            "--no-password",
        ]  # fmt: skip
        if not self.fsync:
            command.append("--no-sync")
        self._run(command)
        # The source's log came along with the copy; this server starts its own.
        self.log_path.unlink(missing_ok=True)
        self.follow(source_host, source_port)
        self._write_managed_conf()
        log.info(
            "embedded.pg.basebackup",
            server=self.name,
            source=f"{source_host}:{source_port}",
            seconds=round(time.monotonic() - started, 3),
        )

    def follow(self, source_host: str, source_port: int) -> None:
        """Stream from ``source_host:source_port`` (rewrites ``primary_conninfo``; takes effect
        at the next start)."""
        auto_conf = self.datadir / "postgresql.auto.conf"
        kept = [
            line
            for line in auto_conf.read_text().splitlines()
            if not line.lstrip().startswith("primary_conninfo")
        ]
        conninfo = (
            f"host={source_host} port={source_port} user={SUPERUSER} application_name={self.name}"
        )
        kept.append(f"primary_conninfo = {quote_setting(conninfo)}")
        auto_conf.write_text("\n".join(kept) + "\n")
        self.upstream = (source_host, source_port)

    def reuse(self, upstream: tuple[str, int] | None = None) -> None:
        """Adopt the cluster an earlier run left in the data directory: no ``initdb``, no base
        backup, the data as it was.

        The managed settings are rewritten (the port may have changed) and, for a replica
        (``upstream`` given), so is the address it streams from.
        """
        if not self.is_initialised:
            raise EmbeddedError(f"{self.name}: {self.datadir} holds no finished cluster to reuse")
        self._write_managed_conf()
        if upstream is not None:
            self.follow(*upstream)
        else:
            self.upstream = None
        log.info("embedded.pg.reused", server=self.name, datadir=str(self.datadir))

    def discard(self) -> None:
        """Delete the data directory (for a replica whose base backup never finished)."""
        if self.is_running:
            raise EmbeddedError(f"{self.name} is running: stop it before discarding its data")
        shutil.rmtree(self.datadir, ignore_errors=True)
        log.info("embedded.pg.discarded", server=self.name, datadir=str(self.datadir))

    def _prepare_datadir(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            raise EmbeddedError(f"{self.datadir} already holds a Postgres cluster")
        self.datadir.mkdir(parents=True, exist_ok=True)
        if any(self.datadir.iterdir()):
            raise EmbeddedError(f"{self.datadir} is not empty")
        os.chmod(self.datadir, 0o700)
        self._chown(self.datadir)

    def _write_managed_conf(self) -> None:
        values = managed_settings(
            host=self.host, port=self.port, fsync=self.fsync, name=self.name
        )
        values.update(self.settings)
        body = "".join(f"{key} = {format_setting(value)}\n" for key, value in values.items())
        path = self.datadir / MANAGED_CONF
        path.write_text(f"# written by bus.embedded for server {self.name!r}\n{body}")
        self._chown(path)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the postmaster and wait until it accepts connections.

        A replica accepts connections once it has replayed to a consistent state. Raises
        :class:`ServerStartError` with the log tail if the server exits or is not ready in time.
        """
        if self.is_running:
            return
        if not (self.datadir / "PG_VERSION").exists():
            raise EmbeddedError(f"{self.name}: {self.datadir} is not initialised")
        started = time.monotonic()
        deadline = started + timeout
        self._wait_previous_postmaster(deadline)
        with open(self.log_path, "ab") as logfile:
            self._chown(self.log_path)
            # Own process group (see ChildProcess): kill() takes every backend down with the
            # postmaster, and so does the watchdog.
            self._proc = self._spawn(
                [str(self.bindir / "postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.datadir,
                env=self._env(),
                **self._user_kwargs(),
            )
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reaped(self._proc)
                raise ServerStartError(
                    self.name, f"postgres exited with code {code}", log_tail=self.log_tail()
                )
            if self._accepts_connections():
                break
            if time.monotonic() >= deadline:
                self._kill_group()
                raise ServerStartError(
                    self.name,
                    f"not accepting connections after {timeout:.1f}s",
                    log_tail=self.log_tail(),
                )
            time.sleep(0.05)
        log.info(
            "embedded.pg.started",
            server=self.name,
            port=self.port,
            pid=self._proc.pid,
            seconds=round(time.monotonic() - started, 3),
        )

    def stop(
        self, mode: Literal["smart", "fast", "immediate"] = "fast", *, timeout: float = 30.0
    ) -> None:
        """Shut the server down (``fast``: abort transactions, checkpoint); kill it on timeout."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if proc is not None:
                self._reaped(proc)
            self._proc = None
            return
        try:
            proc.send_signal(STOP_SIGNALS[mode])
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded.pg.stop_timeout", server=self.name, mode=mode)
            self._kill_group()
        self._reaped(proc)
        self._proc = None
        log.info("embedded.pg.stopped", server=self.name, mode=mode)

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends, as a power cut would."""
        if self._proc is None:
            return
        self._kill_group()
        self._proc = None
        log.info("embedded.pg.killed", server=self.name)

    def restart(self, *, timeout: float = 30.0) -> None:
        """Stop (fast) and start again on the same port."""
        self.stop()
        self.start(timeout=timeout)

    def promote(self, *, timeout: float = 30.0) -> None:
        """Promote this replica to a primary and wait until it accepts writes."""
        rows = self.execute(f"SELECT pg_promote(true, {max(1, int(timeout))})")
        if not rows or rows[0][0] is not True:
            raise WaitTimeout(f"promotion of {self.name}", timeout, detail=self.log_tail(10))
        self.upstream = None
        log.info("embedded.pg.promoted", server=self.name)

    def _kill_group(self) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        # Backends left behind keep the shared memory attached and would block a restart.
        deadline = time.monotonic() + 10.0
        while live_group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._reaped(proc)

    def _wait_previous_postmaster(self, deadline: float) -> None:
        """Wait (until ``deadline``) for a postmaster of an earlier run to exit.

        After a hard kill of the process that ran this server, the watchdog may still be
        shutting that postmaster down; starting now would fail on its lock file. If it is still
        there at the deadline, Postgres itself reports it.
        """
        pid = postmaster_pid(self.datadir)
        if pid is None or not is_alive(pid, name_prefix="postgres"):
            return
        log.info("embedded.pg.waiting_for_previous", server=self.name, pid=pid)
        while is_alive(pid, name_prefix="postgres") and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- SQL --------------------------------------------------------------------------------

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return its rows (``[]`` if none)."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description is not None else []

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    # --- running programs as the server's user ----------------------------------------------

    def _user_kwargs(self) -> dict[str, Any]:
        if self.run_as is None or os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self.run_as is None or os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self.run_as)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.run_as is not None and os.geteuid() == 0:
            env["HOME"] = str(self.datadir.parent)
            env["USER"] = env["LOGNAME"] = self.run_as
        return env

    def _run(self, command: list[str], *, timeout: float = 300.0) -> None:
        # Watched like the server: a killed parent must not leave an initdb or a base backup
        # running.
        proc = self._spawn(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.datadir.parent,
            env=self._env(),
            **self._user_kwargs(),
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            if proc.returncode is not None:
                self._reaped(proc)
        if proc.returncode != 0:
            raise CommandError(command, proc.returncode, output.decode(errors="replace"))
