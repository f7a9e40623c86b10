"""How fast archc.space counts and samples the MetaFormer-style space in bench/metaformer_space.arch,
and the four-stage space in bench/stages_space.arch (counted stack by stack: independent groups).

Prints: the holes, the combinations before type-checking, the exact count and how long counting
took (the probes it elaborated), then samples per second without building modules (a sample is a
dict of hole choices; `concrete` makes its spec text), with and without a budget, and how long
mutate and crossover take; the machine's load average before and after. Writes nothing; copy the
table into docs/benchmarks.md.
Run: python bench/bench_space.py
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # noqa: E402

SPACE = Path(__file__).resolve().parent / "metaformer_space.arch"
STAGES = Path(__file__).resolve().parent / "stages_space.arch"
BUDGET = "params <= 60000"
STAGES_BUDGET = "params <= 100000"
DRAWS = 10_000


def counted(where: str | None, path: Path = SPACE) -> tuple[object, float]:
    from archc.space import Space

    t = time.perf_counter()
    space = Space(path, where=where)
    space.count()
    return space, time.perf_counter() - t


def per_second(fn: object, n: int) -> float:
    best, _ = best_of(lambda: [fn() for _ in range(n)], 3)  # type: ignore[operator]
    return n / best


def main() -> None:
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    space, seconds = counted(None)
    rng = random.Random(0)
    print(f"space: {SPACE.name}: {len(space.holes())} holes, {space.combinations():,} combinations, "
          f"{space.count():,} well-typed")
    print(f"| count | {seconds:.1f} s | {space.prober.elaborated} probes elaborated |")
    print(f"| sample | {per_second(lambda: space.sample(rng), DRAWS):,.0f} /s | no module built |")
    print(f"| sample + concrete text | {per_second(lambda: space.concrete(space.sample(rng)), 500):,.0f} /s | |")
    a, b = space.sample(rng), space.sample(rng)
    print(f"| mutate | {per_second(lambda: space.mutate(a, rng), 50):,.0f} /s | |")
    print(f"| crossover | {per_second(lambda: space.crossover(a, b, rng), 50):,.0f} /s | |")
    within, seconds = counted(BUDGET)
    print(f"| count within '{BUDGET}' | {seconds:.1f} s | {within.count():,} completions, "
          f"{within.prober.elaborated} probes |")
    print(f"| sample within '{BUDGET}' | {per_second(lambda: within.sample(rng), DRAWS):,.0f} /s | |")
    stages, seconds = counted(None, STAGES)
    print(f"space: {STAGES.name}: {len(stages.holes())} holes in {len(stages.groups())} groups, "
          f"{stages.combinations():,} combinations, {stages.count():,} well-typed")
    print(f"| count | {seconds:.1f} s | {stages.prober.elaborated} probes elaborated |")
    print(f"| sample | {per_second(lambda: stages.sample(rng), DRAWS):,.0f} /s | |")
    within, seconds = counted(STAGES_BUDGET, STAGES)
    print(f"| count within '{STAGES_BUDGET}' | {seconds:.1f} s | {within.count():,} completions, "
          f"{within.prober.elaborated} probes |")
    print(f"| sample within '{STAGES_BUDGET}' | {per_second(lambda: within.sample(rng), DRAWS):,.0f} /s | |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
