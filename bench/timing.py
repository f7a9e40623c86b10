"""Side-by-side timing shared by the scripts in bench/: interleaved rounds, medians, per-round ratios.

Each round runs every function once in turn (`inner` calls each), so a slow moment of a busy
machine hits them all alike; a ratio is the median of the per-round ratios, not a ratio of medians.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, inner: int = 1) -> dict[str, list[float]]:
    """Per-round milliseconds (the mean of `inner` calls) of each function, after one warm-up call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[k].append((time.perf_counter() - t) / inner * 1e3)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of time[a] / time[b] (> 1: b is faster)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def median(times: dict[str, list[float]], k: str) -> float:
    return statistics.median(times[k])


def best_of(fn: Callable[[], Any], n: int = 5) -> tuple[float, float]:
    """(best, median) seconds of `n` calls of `fn`."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)
