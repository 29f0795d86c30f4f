"""The layout keeps its promises: layering, small modules, clean types and lint.

* The wire layer (``lsn``, ``errors``, ``protocol``, ``subjects``, ``wire_errors``) is shared by
  the client, the bus and other-language peers' documentation; it imports nothing above it.
* The client imports the bus only inside the functions of the primary-region direct path.
* ``__init__`` modules only re-export.
* Modules stay small; mypy --strict and ruff are clean.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import REPO

WIRE = {"lsn", "errors", "protocol", "subjects", "wire_errors"}
PACKAGES = {"client": REPO / "client", "bus": REPO / "bus", "root": REPO / "writebus"}
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for root in PACKAGES.values() for p in root.rglob("*.py"))


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks
            names |= {
                n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module
            }
    return names


def test_the_wire_layer_imports_nothing_above_it() -> None:
    """lsn, errors, protocol, subjects and wire_errors import only each other from writebus."""
    for name in sorted(WIRE):
        path = REPO / "client" / f"{name}.py"
        for mod in _imports(path):
            if mod.startswith("writebus."):
                parts = mod.split(".")
                assert parts[:2] == ["writebus", "client"] and parts[2] in WIRE, (
                    f"client/{name}.py imports {mod}"
                )


def test_lsn_is_the_bottom_of_the_wire_layer() -> None:
    """lsn.py imports nothing of writebus (no errors <-> lsn cycle)."""
    assert not {m for m in _imports(REPO / "client" / "lsn.py") if m.startswith("writebus")}


def test_the_client_imports_the_bus_only_for_the_direct_path() -> None:
    """No client module imports writebus.bus at import time; pip users of the library load no
    service code unless they write in the primary region."""
    for path in sorted((REPO / "client").glob("*.py")):
        bus = {m for m in _imports(path, top_level_only=True) if m.startswith("writebus.bus")}
        assert not bus, f"{path.name} imports {sorted(bus)} at module level"


def test_init_modules_only_re_export() -> None:
    """Package __init__ modules hold imports, __all__ and a docstring; no logic."""
    for path in sorted(REPO.glob("*/__init__.py")) + sorted(REPO.glob("*/*/__init__.py")):
        if path.parts[-2] in ("tests", "bench", "support", "faults", "unit"):
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            ok = (
                isinstance(node, (ast.Import, ast.ImportFrom))
                or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                or (
                    isinstance(node, (ast.Assign, ast.AnnAssign))
                    and ast.unparse(node).lstrip().startswith("__all__")
                )
            )
            assert ok, f"{path}: {ast.unparse(node)[:60]}"


def test_modules_stay_small() -> None:
    """No module passes ~450 lines: past that it is probably two things."""
    big = {
        str(p.relative_to(REPO)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big


def test_ruff_is_clean() -> None:
    """ruff finds nothing in the code, tests and benchmarks."""
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run(
        [str(ruff), "check", "client", "bus", "writebus", "tests", "bench", "examples"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    """mypy --strict passes on the installed layout (writebus.client, writebus.bus), seen
    through a tree of links as in ``make typecheck``."""
    mypy = Path(sys.executable).parent / "mypy"
    if not mypy.exists():
        pytest.fail("mypy is not installed: it is part of the 'test' extra")
    tree = tmp_path / "writebus"
    shutil.copytree(REPO / "writebus", tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "client").symlink_to(REPO / "client")
    (tree / "bus").symlink_to(REPO / "bus")
    out = subprocess.run(
        [
            str(mypy),
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "writebus",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
