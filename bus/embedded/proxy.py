"""A TCP proxy that adds a one-way delay in each direction: the simulated WAN.

The kernel here has no netem, so WAN latency is simulated in user space. Each direction of each
connection is a pipeline: the reader stamps every chunk with its arrival time and queues it; the
writer sleeps until ``arrival + delay`` and writes it. Byte order is kept and throughput is not
limited by the delay (many chunks are in flight at once; it is never stop-and-wait). With zero
delay the proxy forwards directly. When either side closes, the other side is closed too.

Run it in its own process so the delays do not depend on how busy the client's event loop is::

    python -m writebus.bus.embedded.proxy --delay-ms 25 --route 127.0.0.1:7001=127.0.0.1:5432

It prints ``ready`` on stdout once every route listens. :class:`ProxyProcess` does this from
Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Self

from writebus.bus.embedded.child import ChildProcess
from writebus.bus.embedded.errors import EmbeddedError, ServerStartError
from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.proxy")

CHUNK_SIZE: Final = 64 * 1024
#: Chunks queued per direction before the reader stops reading (backpressure to the sender).
MAX_QUEUED_CHUNKS: Final = 512
READY_LINE: Final = "ready"

_Chunk = tuple[float, bytes]


@dataclass(frozen=True)
class Route:
    """One proxied address: connections to ``listen`` are forwarded to ``target``."""

    listen_host: str
    listen_port: int
    target_host: str
    target_port: int

    @classmethod
    def parse(cls, spec: str) -> Self:
        """Parse ``LISTEN_HOST:PORT=TARGET_HOST:PORT`` (the ``--route`` syntax)."""
        try:
            listen, target = spec.split("=", 1)
            listen_host, listen_port = listen.rsplit(":", 1)
            target_host, target_port = target.rsplit(":", 1)
            return cls(listen_host, int(listen_port), target_host, int(target_port))
        except ValueError as exc:
            raise EmbeddedError(f"bad route {spec!r}: want HOST:PORT=HOST:PORT") from exc

    def __str__(self) -> str:
        return f"{self.listen_host}:{self.listen_port}={self.target_host}:{self.target_port}"


class DelayProxy:
    """An asyncio TCP proxy from one listen port to one target, delaying both directions.

    ``listen_port=0`` picks a free port; read it from :attr:`port` after :meth:`start`.
    """

    def __init__(
        self,
        *,
        target_port: int,
        listen_port: int = 0,
        one_way_delay_ms: float = 0.0,
        listen_host: str = "127.0.0.1",
        target_host: str = "127.0.0.1",
    ) -> None:
        if one_way_delay_ms < 0:
            raise ValueError("one_way_delay_ms must be >= 0")
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.one_way_delay_ms = one_way_delay_ms
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<DelayProxy {self.listen_host}:{self.port} -> {self.target_host}:{self.target_port}"
            f" delay={self.one_way_delay_ms}ms connections={len(self._connections)}>"
        )

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self.listen_port

    @property
    def connection_count(self) -> int:
        """Connections currently proxied."""
        return len(self._connections)

    async def start(self) -> None:
        """Start listening."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connect, self.listen_host, self.listen_port, reuse_address=True
        )

    async def close(self) -> None:
        """Stop listening and close every proxied connection."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_connect(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._proxy(client_r, client_w)
        except asyncio.CancelledError:
            # close() cancels connection tasks; this is their normal end. Re-raising would make
            # asyncio's stream callback log a spurious error on Python 3.11.
            pass
        finally:
            self._connections.discard(task)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError as exc:
            log.debug("embedded.proxy.connect_failed", target=self.target_port, error=str(exc))
            await _close(client_w)
            return
        for writer in (client_w, upstream_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Nagle would hold back small writes and add latency of its own.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        delay = self.one_way_delay_ms / 1000.0
        name = f"proxy:{self.port}->{self.target_port}"
        pumps = [
            asyncio.create_task(_pump(client_r, upstream_w, delay), name=f"{name}:up"),
            asyncio.create_task(_pump(upstream_r, client_w, delay), name=f"{name}:down"),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await asyncio.gather(_close(client_w), _close(upstream_w))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer`` until EOF or error, each chunk ``delay`` seconds late."""
    if delay <= 0:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK_SIZE):
                writer.write(data)
                await writer.drain()
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Chunk] = asyncio.Queue(MAX_QUEUED_CHUNKS)

    async def read_side() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK_SIZE):
                await queue.put((loop.time(), data))
        # An empty chunk marks the end; it too is delivered only after the delay.
        await queue.put((loop.time(), b""))

    reading = asyncio.create_task(read_side(), name="proxy-read")
    try:
        while True:
            stamp, data = await queue.get()
            wait = stamp + delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        return
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


# --- process mode -------------------------------------------------------------------------------


async def serve(
    routes: Sequence[Route], *, one_way_delay_ms: float, exit_with_parent: bool
) -> None:
    """Run one :class:`DelayProxy` per route until SIGTERM/SIGINT (or stdin EOF)."""
    proxies = [
        DelayProxy(
            listen_host=r.listen_host,
            listen_port=r.listen_port,
            target_host=r.target_host,
            target_port=r.target_port,
            one_way_delay_ms=one_way_delay_ms,
        )
        for r in routes
    ]
    for proxy in proxies:
        await proxy.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if exit_with_parent:
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            # The parent holds our stdin pipe: EOF means it is gone, so we go too.
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                stop.set()

        loop.add_reader(fd, on_stdin)
    print(READY_LINE, flush=True)
    log.info("embedded.proxy.ready", routes=[str(r) for r in routes], delay_ms=one_way_delay_ms)
    await stop.wait()
    await asyncio.gather(*(p.close() for p in proxies))


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m writebus.bus.embedded.proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction")
    parser.add_argument(
        "--route", action="append", required=True, type=Route.parse,
        help="LISTEN_HOST:PORT=TARGET_HOST:PORT (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when stdin reaches EOF"
    )
    args = parser.parse_args(argv)
    from writebus.bus.log import configure_logging

    configure_logging(fmt="console", level="info")
    asyncio.run(
        serve(args.route, one_way_delay_ms=args.delay_ms, exit_with_parent=args.exit_with_parent)
    )


class ProxyProcess(ChildProcess):
    """``python -m writebus.bus.embedded.proxy`` as a child process.

    The child exits when this process closes its stdin (or dies), so a crashed test run does not
    leave proxies behind. Its stderr goes to ``log_path`` (or nowhere).
    """

    def __init__(
        self,
        *,
        routes: Sequence[Route],
        one_way_delay_ms: float = 0.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = "proxy"
        self.routes = tuple(routes)
        self.one_way_delay_ms = one_way_delay_ms
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<ProxyProcess routes={len(self.routes)} delay={self.one_way_delay_ms}ms {state}>"

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the child and wait until it prints ``ready``."""
        if self.is_running:
            return
        command = [
            sys.executable, "-m", "writebus.bus.embedded.proxy",
            "--delay-ms", repr(float(self.one_way_delay_ms)),
            "--exit-with-parent",
        ]  # fmt: skip
        for route in self.routes:
            command += ["--route", str(route)]
        env = dict(os.environ)
        # Make `bus` importable in the child even when it is not installed.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with contextlib.ExitStack() as files:
            stderr: IO[bytes] | int = subprocess.DEVNULL
            if self.log_path is not None:
                stderr = files.enter_context(open(self.log_path, "ab"))
            proc = self._spawn(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        self._proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, remaining))
            if not ready:
                self.kill()
                raise ServerStartError(
                    "proxy", f"not ready after {timeout:.1f}s", log_tail=self.log_tail()
                )
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                code = proc.wait()
                self._reaped(proc)
                raise ServerStartError(
                    "proxy", f"exited with code {code}", log_tail=self.log_tail()
                )
            line += chunk
        if line.decode().strip() != READY_LINE:
            self.kill()
            raise ServerStartError("proxy", f"unexpected output {line!r}", log_tail=self.log_tail())
        log.info(
            "embedded.proxy.started",
            pid=proc.pid,
            routes=[str(r) for r in self.routes],
            delay_ms=self.one_way_delay_ms,
        )

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_pipes(proc)
        self._reaped(proc)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the child."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        self._close_pipes(proc)
        self._reaped(proc)
        self._proc = None

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


if __name__ == "__main__":
    main()
