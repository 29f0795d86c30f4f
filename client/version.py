"""The installed writebus version (from the package metadata)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("writebus")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
    VERSION = "0+unknown"
