"""Running approaches against each other, interleaved, so machine noise hits them alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Sample:
    """One measured operation: its latency, whether its read was stale, and optional parts."""

    ms: float
    stale: bool = False
    parts: dict[str, float] = field(default_factory=dict)


class Approach(Protocol):
    """One way of doing the measured operation."""

    name: str

    async def once(self, seq: int) -> Sample:
        """Do the operation once (``seq`` makes its data unique) and measure it."""
        ...


async def interleave(
    approaches: Sequence[Approach], *, rounds: int, warmup: int
) -> dict[str, list[Sample]]:
    """One sample of every approach per round, the order rotating each round.

    ``warmup`` rounds come first and are not recorded (connections, prepared statements, the
    gateway's interest graph). Rotating the order means no approach always follows the same one.
    """
    out: dict[str, list[Sample]] = {a.name: [] for a in approaches}
    n = len(approaches)
    seq = 0
    for r in range(warmup + rounds):
        for k in range(n):
            approach = approaches[(r + k) % n]
            seq += 1
            sample = await approach.once(seq)
            if r >= warmup:
                out[approach.name].append(sample)
    return out
