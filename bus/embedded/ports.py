"""Free TCP ports on 127.0.0.1, chosen at run time, and readiness probes for them."""

from __future__ import annotations

import socket
import threading
import time

from writebus.bus.embedded.errors import WaitTimeout

LOCALHOST = "127.0.0.1"

# Ports handed out by this process: never hand the same one out twice, even after the probe
# socket is closed, because the server meant to bind it may not have started yet.
_issued: set[int] = set()
_lock = threading.Lock()


def free_ports(count: int, *, host: str = LOCALHOST) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on ``host`` right now.

    All probe sockets are held open together so the kernel cannot return one port twice, and
    ports returned earlier by this process are skipped.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        with _lock:
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
                if port in _issued:
                    continue
                _issued.add(port)
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def free_port(*, host: str = LOCALHOST) -> int:
    """Return one TCP port that is free on ``host`` right now."""
    return free_ports(1, host=host)[0]


def port_accepts(port: int, *, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, *, host: str = LOCALHOST, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections; raise :class:`WaitTimeout` otherwise."""
    deadline = time.monotonic() + timeout
    while not port_accepts(port, host=host):
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{host}:{port} to accept connections", timeout)
        time.sleep(0.02)
