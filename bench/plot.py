"""The PNG plot of a run: latency distributions per approach (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import FuncFormatter  # noqa: E402


def _cdf(
    ax: Any, series: Mapping[str, Sequence[float]], title: str, *, log: bool = False
) -> None:
    for name, values in series.items():
        if not values:
            continue
        xs = sorted(values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{name} (n={len(xs)})")
    ax.set_title(title)
    if log:
        ax.set_xscale("log")
        plain = FuncFormatter(lambda x, _pos: f"{x:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("ms" + (" (log scale)" if log else ""))
    ax.set_ylabel("fraction of samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def write_plot(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Latency CDFs (read-your-write, batch, primary-region) and throughput bars."""
    samples = report["samples_ms"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _cdf(
        axes[0][0],
        samples["ryw"],
        f"write then read-your-write from lax (one-way delay {report['one_way_delay_ms']} ms)",
    )
    _cdf(axes[0][1], samples["batch10"], "10-statement atomic change from lax", log=True)
    _cdf(axes[1][0], samples["primary_local"], "primary-region write (syd)", log=True)
    ax = axes[1][1]
    tp = report["throughput_wps"]
    cs = list(tp["direct"])
    names = [n for n in tp if all(c in tp[n] for c in cs)]  # partial ones: in the table only
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(cs))]
        ax.bar(xs, [tp[name][c] for c in cs], width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(cs))])
    ax.set_xticklabels([f"concurrency {c[1:]}" for c in cs])
    ax.set_ylabel("writes/s")
    ax.set_title("single-row insert throughput in syd (no WAN)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
