"""Errors raised by the embedded two-region stack.

Every error derives from :class:`EmbeddedError`; subclasses say what the caller can do about it:
install a binary (:class:`BinaryNotFound`), read the server log (:class:`ServerStartError`,
:class:`CommandError`), wait longer / look at the topology (:class:`WaitTimeout`), or free a port
or a directory another stack holds (:class:`PortInUse`, :class:`DirectoryInUse`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence


class EmbeddedError(Exception):
    """Base class of every error raised by :mod:`writebus.bus.embedded`."""


class BinaryNotFound(EmbeddedError):
    """A server binary (``postgres``, ``nats-server``) could not be found.

    ``searched`` lists the places looked at, ``hint`` says how to install it.
    """

    def __init__(self, binary: str, *, searched: Sequence[str] = (), hint: str = "") -> None:
        self.binary = binary
        self.searched = tuple(searched)
        self.hint = hint
        message = f"{binary} not found"
        if self.searched:
            message += f" (searched: {', '.join(self.searched)})"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class ServerStartError(EmbeddedError):
    """A server process did not come up (exited, or not ready in time).

    ``log_tail`` holds the last lines of its log, which usually say why.
    """

    def __init__(self, server: str, reason: str, *, log_tail: str = "") -> None:
        self.server = server
        self.reason = reason
        self.log_tail = log_tail
        message = f"{server}: {reason}"
        if log_tail:
            message += f"\n--- log tail ---\n{log_tail}"
        super().__init__(message)


class CommandError(EmbeddedError):
    """A helper command (``initdb``, ``pg_basebackup``) failed; ``output`` is what it printed."""

    def __init__(self, command: Sequence[str], returncode: int, output: str) -> None:
        self.command = tuple(command)
        self.returncode = returncode
        self.output = output
        super().__init__(
            f"{' '.join(self.command)} exited with {returncode}\n--- output ---\n{output}"
        )


class WaitTimeout(EmbeddedError):
    """A condition (gateways connected, replica caught up, process ready) was not met in time."""

    def __init__(self, what: str, timeout: float, *, detail: str = "") -> None:
        self.what = what
        self.timeout = timeout
        self.detail = detail
        message = f"timed out after {timeout:.1f}s waiting for {what}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class PortInUse(EmbeddedError):
    """Ports a stack is to listen on are taken by another process: free them or choose others.

    ``ports`` lists them.
    """

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = tuple(ports)
        listed = ", ".join(str(p) for p in self.ports)
        super().__init__(
            f"port{'s' if len(self.ports) > 1 else ''} {listed} already in use on 127.0.0.1: "
            "stop whatever listens there, or choose other ports (--base-port)"
        )


class DirectoryInUse(EmbeddedError):
    """Another stack runs on this directory (it holds the directory's lock).

    ``path`` is the directory, ``holder`` what the lock file says about its holder (a pid).
    """

    def __init__(self, path: str | os.PathLike[str], *, holder: str = "") -> None:
        self.path = str(path)
        self.holder = holder
        by = f" (pid {holder})" if holder else ""
        super().__init__(f"another stack is running on {self.path}{by}: stop it first")


def read_tail(path: str | os.PathLike[str], *, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or ``""`` if it does not exist (for error context)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
