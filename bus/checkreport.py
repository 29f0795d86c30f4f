"""The report of ``writebus check``: the checklist as plain text (80 columns) or one JSON object.

Pure presentation of the :class:`~writebus.bus.checklist.Check` list; no I/O.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

from writebus.bus.checklist import CHECK_NAMES, Check, Status

_MARKS = {Status.PASS: "✓", Status.FAIL: "✗", Status.SKIP: "-"}
_ASCII_MARKS = {Status.PASS: "+", Status.FAIL: "x", Status.SKIP: "-"}
_NAME_WIDTH = max(len(name) for name in CHECK_NAMES)


def marks_for(encoding: str | None) -> dict[Status, str]:
    """✓/✗ marks, or ASCII ones when the output's encoding cannot show them."""
    try:
        "".join(_MARKS.values()).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return dict(_ASCII_MARKS)
    return dict(_MARKS)


@dataclass(frozen=True, kw_only=True)
class Report:
    """The checklist and the settings it judged (None where the settings could not be read)."""

    checks: tuple[Check, ...]
    region: str | None = None
    primary_region: str | None = None
    prefix: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when every check passed, else 1."""
        return 0 if self.ok else 1

    def check(self, name: str) -> Check:
        """The check called ``name``; KeyError if there is none."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as one JSON-ready object: overall ``ok`` and the list of checks."""
        return {
            "ok": self.ok,
            "region": self.region,
            "primary_region": self.primary_region,
            "prefix": self.prefix,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def render(self, *, width: int = 80, encoding: str | None = "utf-8") -> str:
        """The checklist as plain text lines no wider than ``width`` (save unbreakable words):
        a mark, the check's name, what was found, and the fix under it."""
        marks = marks_for(encoding)
        indent = " " * (len(marks[Status.PASS]) + 1 + _NAME_WIDTH + 2)
        lines: list[str] = []
        if self.region is not None:
            lines.append(
                f"writebus check: region {self.region}, primary region {self.primary_region}, "
                f"prefix {self.prefix}"
            )
        for c in self.checks:
            head = f"{marks[c.status]} {c.name.ljust(_NAME_WIDTH)}  "
            lines.extend(_wrap(c.detail, width, head, indent))
            if c.fix:
                lines.extend(_wrap(f"fix: {c.fix}", width, indent, indent + "     "))
        failures = sum(c.status is Status.FAIL for c in self.checks)
        skips = sum(c.status is Status.SKIP for c in self.checks)
        if self.ok:
            lines.append(f"all {len(self.checks)} checks passed")
        else:
            counts = [f"{failures} failed"] + ([f"{skips} skipped"] if skips else [])
            lines.append(f"{', '.join(counts)} of {len(self.checks)} checks")
        return "\n".join(lines)


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]
