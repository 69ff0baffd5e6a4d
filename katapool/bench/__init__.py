"""``katapool bench``: performance by deployment method on this machine."""

from katapool.bench.result import BenchReport, BenchRow

__all__ = ["BenchReport", "BenchRow"]
