"""How fast archc plans tensor parallelism and FSDP units (archc/analysis/parallel.py) for GPT-2
at 12, 32 and 48 layers (GPT-2 small's width, the vocabulary padded to 50304 as nanoGPT does; repeated blocks are planned once, by structural
key). Also times planning with every layer planned on its own (`replicate=` turns the reuse off),
to show what the reuse buys. Writes nothing. Run: python bench/bench_parallel_plan.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # noqa: E402

from archc.analysis.parallel import plan_parallel
from archc.elaborate import elaborate_file

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "models" / "gpt2.arch"




def main() -> None:
    print("| layers | nodes | plan (best / median) | every layer planned (best / median) | placements |")
    print("|---|---|---|---|---|")
    for depth in (12, 32, 48):
        graph = elaborate_file(SPEC, overrides={"depth": depth, "vocab": 50304})
        plan = plan_parallel(graph, tp=4)
        best, median = best_of(lambda g=graph: plan_parallel(g, tp=4), n=7)
        # a replicate= path that matches nothing: same plan, but no layer reuses another's
        slow_best, slow_median = best_of(lambda g=graph: plan_parallel(g, tp=4, replicate=("no.such.module",)), n=3)
        print(f"| {depth} | {len(graph.nodes)} | {best * 1e3:.1f} / {median * 1e3:.1f} ms "
              f"| {slow_best * 1e3:.1f} / {slow_median * 1e3:.1f} ms | {len(plan.placements)} |")


if __name__ == "__main__":
    main()
