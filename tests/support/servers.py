"""Choosing where the test servers run.

``WRITEBUS_TEST_BACKEND``: ``local`` runs Postgres and nats-server as local processes (the
embedded stack); ``docker`` runs them in containers through testcontainers; ``auto`` (default)
uses Docker when a Docker engine answers and local processes otherwise. Both expose the same
interface, so every test runs on either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from writebus.bus.embedded.stack import Stack


def docker_available() -> bool:
    """True when a Docker engine (not just the client) answers."""
    if shutil.which("docker") is None:
        return False
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def backend() -> str:
    """The backend to use: ``local`` or ``docker``."""
    choice = os.environ.get("WRITEBUS_TEST_BACKEND", "auto")
    if choice == "auto":
        return "docker" if docker_available() else "local"
    return choice


def make_stack(*, one_way_delay_ms: float) -> Any:
    """A not-yet-started two-region stack on the chosen backend."""
    if backend() == "docker":
        from tests.support.containers import ContainerStack

        return ContainerStack(one_way_delay_ms=one_way_delay_ms)
    return Stack(one_way_delay_ms=one_way_delay_ms)
