"""Region model, as in fly_rpc.

``PRIMARY_REGION`` names the region holding the Postgres primary. This node's region is
``FLY_REGION`` when set (Fly.io sets it), else ``MY_REGION``. Both default to ``"local"``, so an
unconfigured process is its own primary region: every write goes straight to the local database.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

DEFAULT_REGION = "local"


def my_region(environ: Mapping[str, str] | None = None) -> str:
    """The region this process runs in (``FLY_REGION`` over ``MY_REGION``, default ``"local"``)."""
    env = os.environ if environ is None else environ
    return env.get("FLY_REGION") or env.get("MY_REGION") or DEFAULT_REGION


def primary_region(environ: Mapping[str, str] | None = None) -> str:
    """The region holding the primary database (``PRIMARY_REGION``, default ``"local"``)."""
    env = os.environ if environ is None else environ
    return env.get("PRIMARY_REGION") or DEFAULT_REGION


def is_primary(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process runs in the primary region."""
    return my_region(environ) == primary_region(environ)


def likely_region(region: str, heard: Iterable[str]) -> str | None:
    """The region ``region`` was probably meant to be, among the regions ``heard`` from
    (``"lxa"`` -> ``"lax"``, ``"LAX"`` -> ``"lax"``), or None when none is close. A region that
    is heard is no typo."""
    others = sorted({h for h in heard if h != region})
    by_lower = {h.lower(): h for h in others}
    close = difflib.get_close_matches(region.lower(), sorted(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None
