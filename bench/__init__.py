"""Benchmarks of writebus on a simulated two-region stack (``writebus bench``, issue #3)."""

from bench.run import run_bench

__all__ = ["run_bench"]
